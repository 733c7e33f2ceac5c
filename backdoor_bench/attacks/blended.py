"""Blended (Chen et al., 2017): the whole image blended with a pattern, x' = (1-alpha) x + alpha p.

BackdoorBench blends "Hello Kitty" at alpha 0.2 (config/attack/blended/default.yaml). We ship no
third-party images: the default pattern is fixed-seed uniform noise, and `pattern_path` takes
the user's own image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from backdoor_bench.attacks.base import Attack
from backdoor_bench.attacks.triggers import blend
from backdoor_bench.errors import ConfigError


class Blended(Attack):
    """Args (beyond `Attack`'s):
    alpha: blend weight in training; `test_alpha` at test time (default: the same).
    pattern_path: an image file to blend; null uses procedural noise from `pattern_seed`.
    """

    test_only = ("name", "test_alpha")

    def __init__(
        self,
        alpha: float = 0.2,
        test_alpha: float | None = None,
        pattern_path: str | None = None,
        pattern_seed: int = 0,
        **kw,
    ):
        super().__init__(**kw)
        for key, a in (("alpha", alpha), ("test_alpha", test_alpha)):
            if a is not None and not 0.0 <= float(a) <= 1.0:
                raise ConfigError(f"attack.{key}={a} is out of range: use a weight in [0, 1]")
        if pattern_path and not Path(pattern_path).expanduser().is_file():
            raise ConfigError(f"attack.pattern_path={pattern_path} is not a file: give an image or null")
        if pattern_path:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(Path(pattern_path).expanduser()) as img:
                    img.verify()
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise ConfigError(
                    f"attack.pattern_path={pattern_path} is not an image ({e}): give a PNG or JPEG file, or null"
                ) from None
        self.alpha = float(alpha)
        self.test_alpha = self.alpha if test_alpha is None else float(test_alpha)
        self.pattern_path, self.pattern_seed = pattern_path, int(pattern_seed)

    def poison_spec(self, cfg):
        spec = super().poison_spec(cfg)
        if self.pattern_path:  # the image's content, not just its name
            from backdoor_bench.cache import sha256_file

            spec["pattern_sha256"] = sha256_file(Path(self.pattern_path).expanduser())
        return spec

    def pattern(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The blend pattern as uint8 `[C, H, W]`."""
        c, h, w = shape
        if self.pattern_path:
            from PIL import Image

            img = Image.open(Path(self.pattern_path).expanduser()).convert("L" if c == 1 else "RGB")
            arr = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.uint8)
            return torch.from_numpy(arr.copy()).reshape(h, w, c).permute(2, 0, 1).contiguous()
        g = torch.Generator().manual_seed(self.pattern_seed)
        return torch.randint(0, 256, (c, h, w), generator=g, dtype=torch.uint8)

    def apply(self, x):
        return blend(x, self.pattern(tuple(x.shape[1:])).to(x.device), self.test_alpha)

    def stamp(self, x, index, generator):
        return blend(x, self.pattern(tuple(x.shape[1:])).to(x.device), self.alpha)
