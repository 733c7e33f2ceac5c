"""Blended (Chen et al., 2017): the whole image blended with a pattern, x' = (1-alpha) x + alpha p.

BackdoorBench blends "Hello Kitty" at alpha 0.2 (config/attack/blended/default.yaml). We ship no
third-party images: the default pattern is fixed-seed uniform noise; `pattern_path` takes an image
or array file, or `asset:hello_kitty` (fetched by `python -m backdoor_bench.assets fetch`).
"""

from __future__ import annotations

import torch

from backdoor_bench.attacks.base import Attack
from backdoor_bench.attacks.triggers import blend, check_pattern_file, load_pattern, with_file_hash
from backdoor_bench.errors import ConfigError


class Blended(Attack):
    """Args (beyond `Attack`'s):
    alpha: blend weight in training; `test_alpha` at test time (default: the same).
    pattern_path: an image or .npy/.npz array to blend (or `asset:NAME`); null: noise from `pattern_seed`.
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
        if pattern_path:
            check_pattern_file(pattern_path, "attack.pattern_path")
        self.alpha = float(alpha)
        self.test_alpha = self.alpha if test_alpha is None else float(test_alpha)
        self.pattern_path, self.pattern_seed = pattern_path, int(pattern_seed)

    def poison_spec(self, cfg):
        return with_file_hash(super().poison_spec(cfg), "pattern", self.pattern_path)

    def pattern(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The blend pattern as uint8 `[C, H, W]`."""
        c, h, w = shape
        if self.pattern_path:
            return load_pattern(self.pattern_path, shape)
        g = torch.Generator().manual_seed(self.pattern_seed)
        return torch.randint(0, 256, (c, h, w), generator=g, dtype=torch.uint8)

    def apply(self, x):
        return blend(x, self.pattern(tuple(x.shape[1:])).to(x.device), self.test_alpha)

    def stamp(self, x, index, generator):
        return blend(x, self.pattern(tuple(x.shape[1:])).to(x.device), self.alpha)
