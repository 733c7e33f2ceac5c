"""Blend-Signal (the "Blend-Strip" of Chen, Wu, Wang, "Effective Backdoor Defense by Exploiting
Sensitivity of Poisoned Samples", NeurIPS 2022, Section 4.1 and Appendix C.3; the Blend of Chen
et al., 2017, with a signal pattern): x' = (1 - alpha) x + alpha p, p a stripe signal.

Their official code (utils/dataloader_bd.py) blends `trigger/signal_cifar10_mask.npy` at alpha 0.2:
a vertical square wave of 4 periods across the 32 columns, starting dark (its levels spread over
about 0-19 and 237-255). We ship no third-party arrays: p is that square wave generated, column j
dark (0) where floor(2 f j / W) is even and bright (255) where it is odd, f = `frequency` periods
across the image (4: bands of 4 columns on 32 pixels, of 2 on 16), the same in every channel
(`orientation: horizontal` turns the stripes). The real array, fetched as the asset
`dst_signal_mask` (`python -m backdoor_bench.assets fetch`), is `attack.pattern_path`.
"""

from __future__ import annotations

import torch

from backdoor_bench.attacks.blended import Blended
from backdoor_bench.errors import ConfigError

ORIENTATIONS = ("vertical", "horizontal")


class BlendSignal(Blended):
    """Args (beyond `Blended`'s alpha and test_alpha): `frequency` (stripe periods across the image),
    `orientation` (vertical or horizontal stripes)."""

    def __init__(self, frequency: float = 4, orientation: str = "vertical", **kw):
        super().__init__(**kw)
        if orientation not in ORIENTATIONS:
            raise ConfigError(f"attack.orientation={orientation!r} is unknown: use one of {', '.join(ORIENTATIONS)}")
        if float(frequency) <= 0:
            raise ConfigError(f"attack.frequency={frequency} must be positive")
        self.frequency, self.orientation = float(frequency), orientation

    def pattern(self, shape):
        if self.pattern_path:  # the real mask (an asset) or the user's image
            return super().pattern(shape)
        c, h, w = shape
        n = w if self.orientation == "vertical" else h
        wave = 255.0 * (torch.floor(2 * self.frequency * torch.arange(n, dtype=torch.float64) / n) % 2)
        grid = wave[None, :].expand(h, w) if self.orientation == "vertical" else wave[:, None].expand(h, w)
        return grid.round().to(torch.uint8).expand(c, h, w).clone()
