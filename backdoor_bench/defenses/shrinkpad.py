"""ShrinkPad: a test-time input transformation (Li, Zhai, Wu, Jiang, Li and Xia, "Rethinking the
Trigger of Backdoor Attack", 2021, and "Backdoor Attack in the Physical World", ICLR 2021 workshop).

Every input the evaluator feeds the model is shrunk by `shrink_rate` of its side (bilinear) and
zero-padded back to its size at a random position, which moves and distorts a trigger the model
learned at a fixed place. The model is the backdoored one, unchanged. DBD (Huang et al., ICLR
2022, App. B.3) uses a shrinking rate of 10%.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome
from backdoor_bench.errors import ConfigError


class ShrinkPadTransform:
    """uint8 `[N, C, H, W]` -> the same shape: each image shrunk to (H - s, W - s), s =
    round(`shrink_rate` x H), and placed at a random offset in [0, s] per axis on a black canvas.
    Offsets come from a generator seeded with `seed` and advance with every call."""

    def __init__(self, shrink_rate: float, seed: int = 0):
        self.shrink_rate = float(shrink_rate)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        sh, sw = round(self.shrink_rate * h), round(self.shrink_rate * w)
        if sh == 0 and sw == 0:
            return x
        small = F.interpolate(x.float(), size=(h - sh, w - sw), mode="bilinear", align_corners=False, antialias=True)
        small = small.round().clamp(0, 255).to(torch.uint8)
        top = torch.randint(0, sh + 1, (n,), generator=self.generator).tolist()
        left = torch.randint(0, sw + 1, (n,), generator=self.generator).tolist()
        out = torch.zeros_like(x)
        for i in range(n):
            out[i, :, top[i] : top[i] + h - sh, left[i] : left[i] + w - sw] = small[i]
        return out


class ShrinkPad(Defense):
    """Args: `shrink_rate` (a share of the image side, in (0, 0.5))."""

    def __init__(self, name: str = "shrinkpad", shrink_rate: float = 0.1, **kw):
        super().__init__(name=name, **kw)
        if not 0 < float(shrink_rate) < 0.5:
            raise ConfigError(f"defense.shrink_rate={shrink_rate} must be a share of the side in (0, 0.5)")
        self.shrink_rate = float(shrink_rate)

    def run(self, ctx: DefenseContext) -> Outcome:
        h = ctx.train.shape[-1]
        if round(self.shrink_rate * h) == 0:
            raise ConfigError(
                f"defense.shrink_rate={self.shrink_rate} shrinks {h}-pixel images by 0 pixels: "
                f"use at least {math.ceil(50 / h) / 100:.2f}"
            )
        transform = ShrinkPadTransform(self.shrink_rate, ctx.seed)
        return Outcome(
            model=ctx.backdoored_model(),
            input_transform=transform,
            extra={"shrink_pixels": round(self.shrink_rate * h)},
        )
