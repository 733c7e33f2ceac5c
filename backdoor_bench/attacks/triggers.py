"""Trigger pieces several attacks share: square patches and blending on uint8 images."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from backdoor_bench.errors import ConfigError

PATTERNS = ("solid", "checkerboard", "random", "grid")
CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")


def blend(x: torch.Tensor, pattern: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """(1 - alpha) * x + alpha * pattern on uint8 images, rounded to the nearest level."""
    out = (1 - alpha) * x.float() + alpha * pattern.float()
    return out.round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class Patch:
    """A square patch: `size` pixels at a corner (with `margin`) or at `[row, col]`.

    `pattern`: `solid` (every pixel `value`), `checkerboard` (`value` where row+col is even, 0
    elsewhere), `random` (a fixed colour per pixel from `seed`) or `grid` (the 3x3 `gridTrigger`
    of D-ST/D-BR's official code, Chen, Wu, Wang, NeurIPS 2022: rows [0 0 v] [0 v 0] [v 0 v]).
    `alpha` < 1 blends the patch
    into the image instead of replacing the pixels. `key` names the config entry in errors.
    """

    size: int = 3
    location: object = "bottom_right"
    margin: int = 0
    pattern: str = "solid"
    value: int = 255
    seed: int = 0
    alpha: float = 1.0
    key: str = "attack"

    def __post_init__(self):
        k = self.key
        if not isinstance(self.location, str):  # [row, col] of the top-left pixel
            loc = list(self.location) if isinstance(self.location, Iterable) else None  # a ListConfig too
            if loc is None or len(loc) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in loc):
                raise ConfigError(
                    f"{k}.location={self.location} is not a corner or [row, col]: use one of "
                    f"{', '.join(CORNERS)} or two whole numbers [row, col]"
                )
            object.__setattr__(self, "location", tuple(loc))
        if self.pattern not in PATTERNS:
            raise ConfigError(f"{k}.pattern={self.pattern!r} is unknown: use one of {', '.join(PATTERNS)}")
        if isinstance(self.location, str) and self.location not in CORNERS:
            raise ConfigError(
                f"{k}.location={self.location!r} is unknown: use one of {', '.join(CORNERS)} or [row, col]"
            )
        if self.pattern == "grid" and int(self.size) != 3:
            raise ConfigError(f"{k}.pattern=grid is D-ST/D-BR's 3x3 grid trigger: set {k}.size=3")
        if int(self.size) < 1:
            raise ConfigError(f"{k}.size={self.size} must be at least 1")
        if not 0 <= int(self.value) <= 255:
            raise ConfigError(f"{k}.value={self.value} must be a pixel value in 0..255")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ConfigError(f"{k}.alpha={self.alpha} is out of range: use a weight in [0, 1]")

    @classmethod
    def from_cfg(cls, cfg, key: str) -> Patch:
        from omegaconf import OmegaConf

        from backdoor_bench.errors import check_node

        d = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        check_node(key, d, cls)
        return cls(**d, key=key)

    def origin(self, h: int, w: int) -> tuple[int, int]:
        s, m = int(self.size), int(self.margin)
        if not isinstance(self.location, str):
            return int(self.location[0]), int(self.location[1])
        r = m if self.location.startswith("top") else h - s - m
        c = m if self.location.endswith("left") else w - s - m
        return r, c

    def check(self, h: int, w: int) -> None:
        r, c = self.origin(h, w)
        s = int(self.size)
        if s + int(self.margin) > min(h, w) or r < 0 or c < 0 or r + s > h or c + s > w:
            raise ConfigError(
                f"{self.key}.size={s} (location {self.location}, margin {self.margin}) does not "
                f"fit in a {h}x{w} image: use a smaller {self.key}.size or another location"
            )

    def pixels(self, channels: int) -> torch.Tensor:
        """The patch as uint8 `[C, size, size]`."""
        s = int(self.size)
        if self.pattern == "solid":
            return torch.full((channels, s, s), int(self.value), dtype=torch.uint8)
        if self.pattern == "checkerboard":
            even = (torch.arange(s)[:, None] + torch.arange(s)[None]) % 2 == 0
            return (even.to(torch.uint8) * int(self.value)).expand(channels, s, s).clone()
        if self.pattern == "grid":
            grid = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.uint8)
            return (grid * int(self.value)).expand(channels, s, s).clone()
        g = torch.Generator().manual_seed(int(self.seed))
        return torch.randint(0, 256, (channels, s, s), generator=g, dtype=torch.uint8)

    def mask(self, h: int, w: int) -> torch.Tensor:
        """Bool `[H, W]`, true inside the patch."""
        r, c = self.origin(h, w)
        m = torch.zeros(h, w, dtype=torch.bool)
        m[r : r + int(self.size), c : c + int(self.size)] = True
        return m

    def stamp(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """The images with the patch (replaced, or blended at `alpha`); the input is not modified.
        `pixels` (uint8 `[C, size, size]`) replaces the procedural pattern (TrojanNN's optimised one)."""
        out = x.clone()
        r, c = self.origin(*x.shape[-2:])
        s = int(self.size)
        region = out[..., r : r + s, c : c + s]
        p = (self.pixels(x.shape[-3]) if pixels is None else pixels).to(x.device)
        out[..., r : r + s, c : c + s] = p if float(self.alpha) == 1.0 else blend(region, p, float(self.alpha))
        return out


def stamp_all(patches: list[Patch], x: torch.Tensor) -> torch.Tensor:
    """Stamp several patches in order (later ones on top)."""
    for p in patches:
        x = p.stamp(x)
    return x
