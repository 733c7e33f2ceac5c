"""SIG (Barni et al., ICIP 2019): a clean-label sinusoidal signal, x' = clip(x + delta sin(2 pi j f / W)).

Only target-class images are poisoned and no label changes. Defaults from BackdoorBench
(config/attack/sig/default.yaml): delta 40 in training and at test, f 6. D-ST/D-BR's official code
(Chen, Wu, Wang, NeurIPS 2022; utils/dataloader_bd.py) tests at 60 (`attack=dst/sig`). `poison_rate` is a fraction
of the target class: 1.0
poisons the whole class, which is BackdoorBench's 10% of CIFAR-10.
"""

from __future__ import annotations

import math

import torch

from backdoor_bench.attacks.base import Attack
from backdoor_bench.errors import ConfigError


class SIG(Attack):
    """Args (beyond `Attack`'s): `delta` (training amplitude, pixel levels), `test_delta`
    (test amplitude; null: delta), `frequency` (periods across the image width)."""

    clean_label = True
    rate_of = "eligible"
    test_only = ("name", "test_delta")

    def __init__(self, delta: float = 40, test_delta: float | None = None, frequency: float = 6, **kw):
        super().__init__(**kw)
        for key, v in (("delta", delta), ("test_delta", test_delta)):
            if v is not None and not 0 < float(v) <= 255:
                raise ConfigError(f"attack.{key}={v} is out of range: use an amplitude in (0, 255]")
        if float(frequency) <= 0:
            raise ConfigError(f"attack.frequency={frequency} must be positive")
        self.delta, self.frequency = float(delta), float(frequency)
        self.test_delta = self.delta if test_delta is None else float(test_delta)

    def signal(self, width: int, delta: float) -> torch.Tensor:
        """delta * sin(2 pi j f / W) for columns j = 0..W-1 (float, pixel levels)."""
        return delta * torch.sin(2 * math.pi * torch.arange(width) * self.frequency / width)

    def _add(self, x: torch.Tensor, delta: float) -> torch.Tensor:
        s = self.signal(x.shape[-1], delta).to(x.device)
        return (x.float() + s).round().clamp(0, 255).to(torch.uint8)

    def apply(self, x):
        return self._add(x, self.test_delta)

    def stamp(self, x, index, generator):
        return self._add(x, self.delta)
