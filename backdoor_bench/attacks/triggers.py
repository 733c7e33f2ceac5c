"""Trigger pieces several attacks share: square patches, blending on uint8 images, and trigger
files (an image, or a NumPy array as the papers' code ships them)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from backdoor_bench.errors import ConfigError

PATTERNS = ("solid", "checkerboard", "random", "grid")
CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")


def blend(x: torch.Tensor, pattern: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """(1 - alpha) * x + alpha * pattern on uint8 images, rounded to the nearest level."""
    out = (1 - alpha) * x.float() + alpha * pattern.float()
    return out.round().clamp(0, 255).to(torch.uint8)


ARRAY_SUFFIXES = (".npy", ".npz")


def check_pattern_file(path: str, key: str) -> None:
    """Raise a ConfigError naming `key` unless `path` is a readable image or .npy/.npz array."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{key}={path} is not a file: give an image, a .npy/.npz array, or null")
    try:
        if p.suffix in ARRAY_SUFFIXES:
            load_array(p)
            return
        from PIL import Image

        with Image.open(p) as img:
            img.verify()
    except Exception as e:  # PIL and NumPy raise many types for a bad file
        raise ConfigError(f"{key}={path} is not an image or array ({e}): give a PNG, JPEG, .npy or .npz file") from None


def load_array(path: Path) -> np.ndarray:
    """A .npy array, or a .npz archive's `x` (D-ST's Trojan trigger) or only array, as float64."""
    z = np.load(path, allow_pickle=False)
    if isinstance(z, np.ndarray):
        return z.astype(np.float64)
    with z:
        return np.asarray(z["x"] if "x" in z.files else z[z.files[0]], dtype=np.float64)


def to_chw(arr: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """An array (HW, HWC or CHW) as float `[C, H, W]` of `shape`, resized by nearest neighbour."""
    c, h, w = shape
    t = torch.from_numpy(np.ascontiguousarray(arr)).double()
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 3 and t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(2, 0, 1)
    if t.ndim != 3:
        raise ConfigError(f"a trigger array of shape {tuple(arr.shape)} is not an image: use HW, HWC or CHW")
    if tuple(t.shape[1:]) != (h, w):
        t = F.interpolate(t[None], size=(h, w), mode="nearest")[0]
    if t.shape[0] != c:
        t = t.mean(0, keepdim=True).expand(c, h, w) if c == 1 else t[:1].expand(c, h, w)
    return t.contiguous()


def with_file_hash(spec: dict, name: str, path: str | None) -> dict:
    """A poison spec with the file's content hash (`<name>_sha256`) beside its path: editing the
    file changes the cache key."""
    if path:
        from backdoor_bench.cache import sha256_file

        spec[f"{name}_sha256"] = sha256_file(Path(path).expanduser())
    return spec


def load_pattern(path: str, shape: tuple[int, int, int], nearest: bool = False) -> torch.Tensor:
    """A trigger file as uint8 `[C, H, W]` of `shape`: an image (resized bilinearly as PIL does for
    BackdoorBench and DBD, or by `nearest` neighbour) or an array (rounded to levels 0..255, resized
    by nearest neighbour)."""
    c, h, w = shape
    p = Path(path).expanduser()
    if p.suffix in ARRAY_SUFFIXES:
        return to_chw(load_array(p), shape).round().clamp(0, 255).to(torch.uint8)
    from PIL import Image

    img = Image.open(p).convert("L" if c == 1 else "RGB")
    arr = np.asarray(img.resize((w, h), Image.NEAREST if nearest else Image.BILINEAR), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).reshape(h, w, c).permute(2, 0, 1).contiguous()


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


def rgb_to_ycrcb(x: torch.Tensor) -> torch.Tensor:
    """Float RGB `[N, 3, H, W]` in pixel levels to OpenCV's YCrCb (channels Y, Cr, Cb; 128 offset)."""
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, (r - y) * 0.713 + 128, (b - y) * 0.564 + 128], 1)


def ycrcb_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """The inverse of `rgb_to_ycrcb` (OpenCV's coefficients)."""
    y, cr, cb = x[:, 0], x[:, 1] - 128, x[:, 2] - 128
    return torch.stack([y + 1.403 * cr, y - 0.714 * cr - 0.344 * cb, y + 1.773 * cb], 1)


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix D (`D @ v` is OpenCV's `cv2.dct` of a vector v)."""
    k, i = torch.arange(n, dtype=torch.float64)[:, None], torch.arange(n, dtype=torch.float64)[None]
    d = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2 / n) ** 0.5
    d[0] /= 2**0.5
    return d


def frequency_trigger(
    x: torch.Tensor, channels: list[int], window: int, positions: list[list[int]], magnitude: float, yuv: bool
) -> torch.Tensor:
    """FTrojan's trigger (Wang et al., ECCV 2022; also CTRL's): uint8 images to YCrCb (`yuv`, 3
    channels), a 2-D DCT on every `window` x `window` block, `magnitude` added at each of
    `positions` (row, col inside a block) in each of `channels`, the inverse DCT and back to RGB,
    rounded and clipped once at the end. Single-channel images take the trigger in channel 0."""
    out = x.double()
    yuv = yuv and x.shape[1] == 3
    if yuv:
        out = rgb_to_ycrcb(out)
    n, c, h, w = out.shape
    d = dct_matrix(window).to(out.device)
    blocks = out.reshape(n, c, h // window, window, w // window, window).transpose(3, 4)  # [..., bh, bw, win, win]
    coeffs = d @ blocks @ d.T
    for ch in channels if c > 1 else [0]:
        for r, col in positions:
            coeffs[:, ch, :, :, r, col] += magnitude
    out = (d.T @ coeffs @ d).transpose(3, 4).reshape(n, c, h, w)
    if yuv:
        out = ycrcb_to_rgb(out)
    return out.round().clamp(0, 255).to(torch.uint8)


def dither(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Colour-depth squeezing to `levels` levels per channel with Floyd-Steinberg error diffusion
    (BppAttack's trigger, Wang et al., CVPR 2022): pixels in raster order, each rounded to the
    nearest level, its error passed on 7/16 right, 3/16 down-left, 5/16 down, 1/16 down-right."""
    img = x.double().clone()
    h, w = img.shape[-2:]
    step = 255.0 / (levels - 1)
    for i in range(h):
        for j in range(w):
            old = img[..., i, j].clone()
            new = torch.round(old / step) * step
            img[..., i, j] = new
            err = old - new
            if j + 1 < w:
                img[..., i, j + 1] += err * 7 / 16
            if i + 1 < h:
                if j > 0:
                    img[..., i + 1, j - 1] += err * 3 / 16
                img[..., i + 1, j] += err * 5 / 16
                if j + 1 < w:
                    img[..., i + 1, j + 1] += err * 1 / 16
    return img.round().clamp(0, 255).to(torch.uint8)
