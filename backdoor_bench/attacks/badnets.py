"""BadNets (Gu et al., 2017): a small patch stamped at a fixed place; all2one or all2all.

Default as BackdoorBench (specs/backdoorbench.md section 3): a 3x3 white square in the
bottom-right corner, 10% of the training set, target 0.
"""

from __future__ import annotations

import torch

from backdoor_bench.attacks.base import Attack
from backdoor_bench.errors import ConfigError

PATTERNS = ("solid", "checkerboard", "random")
LOCATIONS = ("bottom_right", "bottom_left", "top_right", "top_left")


class BadNets(Attack):
    """Args (beyond `Attack`'s):
        size: side of the square patch in pixels.
        location: a corner name, or `[row, col]` of the patch's top-left pixel.
        margin: distance of a corner patch from the image border.
        pattern: `solid` (every pixel `value`), `checkerboard` (`value` where row+col is even,
            0 elsewhere) or `random` (a fixed random colour per pixel from `pattern_seed`).
    """

    def __init__(self, size: int = 3, location="bottom_right", margin: int = 0, pattern: str = "solid",
                 value: int = 255, pattern_seed: int = 0, **kw):
        super().__init__(**kw)
        if pattern not in PATTERNS:
            raise ConfigError(f"attack.pattern={pattern!r} is unknown: use one of {', '.join(PATTERNS)}")
        if isinstance(location, str) and location not in LOCATIONS:
            raise ConfigError(f"attack.location={location!r} is unknown: use one of {', '.join(LOCATIONS)} "
                              "or [row, col]")
        if int(size) < 1:
            raise ConfigError(f"attack.size={size} must be at least 1")
        if not 0 <= int(value) <= 255:
            raise ConfigError(f"attack.value={value} must be a pixel value in 0..255")
        self.size, self.location, self.margin = int(size), location, int(margin)
        self.pattern, self.value, self.pattern_seed = pattern, int(value), int(pattern_seed)

    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        _, h, w = shape
        r, c = self.origin(h, w)
        if self.size + self.margin > min(h, w) or r < 0 or c < 0 or r + self.size > h or c + self.size > w:
            raise ConfigError(f"attack.size={self.size} (location {self.location}, margin {self.margin}) does "
                              f"not fit in a {h}x{w} image: use a smaller attack.size or another location")

    def origin(self, h: int, w: int) -> tuple[int, int]:
        s, m = self.size, self.margin
        if not isinstance(self.location, str):
            return int(self.location[0]), int(self.location[1])
        r = m if self.location.startswith("top") else h - s - m
        c = m if self.location.endswith("left") else w - s - m
        return r, c

    def patch(self, channels: int) -> torch.Tensor:
        """The patch as uint8 `[C, size, size]`."""
        s = self.size
        if self.pattern == "solid":
            return torch.full((channels, s, s), self.value, dtype=torch.uint8)
        if self.pattern == "checkerboard":
            even = (torch.arange(s)[:, None] + torch.arange(s)[None]) % 2 == 0
            return (even.to(torch.uint8) * self.value).expand(channels, s, s).clone()
        g = torch.Generator().manual_seed(self.pattern_seed)
        return torch.randint(0, 256, (channels, s, s), generator=g, dtype=torch.uint8)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        r, c = self.origin(*x.shape[-2:])
        out[..., r:r + self.size, c:c + self.size] = self.patch(x.shape[1]).to(x.device)
        return out
