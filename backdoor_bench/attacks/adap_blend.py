"""Adap-Blend (Qi et al., ICLR 2023, "Revisiting the assumption of latent separability"), as
backdoor-toolbox builds it (github.com/vtu81/backdoor-toolbox, poison_tool_box/adaptive_blend.py).

Payload samples (trigger, label -> target) and cover samples (trigger, label kept) carry a
*partial* trigger: the image is cut into a grid of `pieces` equal pieces and, per sample, a fresh
random `mask_rate` share of the pieces is left out; the rest are blended at `alpha`:
x' = x + alpha m (p - x). At test time the *full* pattern is blended at the stronger
`test_alpha`. Rates from the flows paper (Sabolic, Grubisic, Segvic, Appendix B): poison 1%,
cover 1%; opacities from the toolbox
README: alpha 0.15, test_alpha 0.2. The pattern is Blended's (procedural noise or `pattern_path`;
the toolbox uses Hello Kitty).
"""

from __future__ import annotations

import math

import torch

from backdoor_bench.attacks.blended import Blended
from backdoor_bench.attacks.triggers import blend
from backdoor_bench.errors import ConfigError


class AdapBlend(Blended):
    """Args (beyond `Blended`'s): `cover_rate` (cover samples as a fraction of the training set),
    `pieces` (a square number: the grid of trigger pieces), `mask_rate` (share of pieces left out)."""

    def __init__(self, cover_rate: float = 0.01, pieces: int = 16, mask_rate: float = 0.5, **kw):
        super().__init__(**kw)
        if math.isqrt(int(pieces)) ** 2 != int(pieces):
            raise ConfigError(f"attack.pieces={pieces} must be a square number (for example 16 = 4 x 4)")
        if not 0 <= float(mask_rate) < 1 or not 0 <= float(cover_rate) <= 1:
            raise ConfigError("attack.mask_rate must be in [0, 1) and attack.cover_rate in [0, 1]")
        self.cover_rate, self.pieces, self.mask_rate = float(cover_rate), int(pieces), float(mask_rate)

    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        side = math.isqrt(self.pieces)
        if shape[1] % side or shape[2] % side:
            raise ConfigError(
                f"attack.pieces={self.pieces}: a {shape[1]}x{shape[2]} image does not split into "
                f"{side}x{side} equal pieces"
            )

    def piece_masks(self, n: int, h: int, w: int, generator: torch.Generator) -> torch.Tensor:
        """Float `[n, 1, H, W]`: 1 on the kept pieces, a fresh random choice per sample."""
        side = math.isqrt(self.pieces)
        n_out = int(round(self.mask_rate * self.pieces))
        order = torch.stack([torch.randperm(self.pieces, generator=generator) for _ in range(n)])
        keep = torch.ones(n, self.pieces)
        keep.scatter_(1, order[:, :n_out], 0.0)
        grid = keep.view(n, 1, side, side)
        return grid.repeat_interleave(h // side, dim=2).repeat_interleave(w // side, dim=3)

    def stamp(self, x, index, generator):
        m = self.piece_masks(len(x), *x.shape[-2:], generator).to(x.device)
        return blend(x, self.pattern(tuple(x.shape[1:])).to(x.device), self.alpha * m)

    def n_cover(self, n_poison, n_train):
        return int(round(self.cover_rate * n_train))

    def stamp_cover(self, x, index, generator):
        return self.stamp(x, index, generator)
