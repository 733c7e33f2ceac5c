"""Blend-Signal (the "Blend-Strip" of Chen, Wu, Wang, "Effective Backdoor Defense by Exploiting
Sensitivity of Poisoned Samples", NeurIPS 2022, Section 4.1 and Appendix C.3; the Blend of Chen
et al., 2017, with a signal pattern): x' = (1 - alpha) x + alpha p, p a procedural stripe signal.

Their official code (utils/dataloader_bd.py) blends `trigger/signal_cifar10_mask.npy` at alpha 0.2. We
ship no third-party arrays: p is a sinusoidal stripe pattern, p[i, j] = 127.5 (1 + sin(2 pi f j / W))
(vertical stripes; `orientation: horizontal` turns them), the same in every channel.
"""

from __future__ import annotations

import math

import torch

from backdoor_bench.attacks.blended import Blended
from backdoor_bench.errors import ConfigError

ORIENTATIONS = ("vertical", "horizontal")


class BlendSignal(Blended):
    """Args (beyond `Blended`'s alpha and test_alpha): `frequency` (stripe periods across the image),
    `orientation` (vertical or horizontal stripes)."""

    def __init__(self, frequency: float = 6, orientation: str = "vertical", **kw):
        super().__init__(**kw)
        if self.pattern_path:
            raise ConfigError("attack=blend_signal draws its own pattern: use attack=blended for attack.pattern_path")
        if orientation not in ORIENTATIONS:
            raise ConfigError(f"attack.orientation={orientation!r} is unknown: use one of {', '.join(ORIENTATIONS)}")
        if float(frequency) <= 0:
            raise ConfigError(f"attack.frequency={frequency} must be positive")
        self.frequency, self.orientation = float(frequency), orientation

    def pattern(self, shape):
        c, h, w = shape
        n = w if self.orientation == "vertical" else h
        wave = 127.5 * (1 + torch.sin(2 * math.pi * self.frequency * torch.arange(n) / n))
        grid = wave[None, :].expand(h, w) if self.orientation == "vertical" else wave[:, None].expand(h, w)
        return grid.round().to(torch.uint8).expand(c, h, w).clone()
