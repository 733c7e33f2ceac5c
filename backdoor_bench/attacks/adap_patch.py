"""Adap-Patch (Qi et al., ICLR 2023, "Revisiting the assumption of latent separability"), as
backdoor-toolbox builds it (github.com/vtu81/backdoor-toolbox, poison_tool_box/adaptive_patch.py).

k low-opacity training patches: the payload samples (label -> target) are split into k equal
consecutive blocks and each block carries one patch; the cover samples (label kept) are split
the same way. At test time other patches are stamped together at full opacity. The toolbox's
patches are image files (phoenix, firefox, BadNets and TrojanNN squares); ours are procedural
`triggers.Patch` entries with the toolbox's opacities (0.5, 0.2, 0.5, 0.3), and the test set
stamps a relocated copy of the first patch plus the third, as the toolbox tests with a moved
phoenix and the BadNets square. Rates from the flows paper (Sabolic, Grubisic, Segvic,
Appendix B): poison 1%, cover 1%.
"""

from __future__ import annotations

import torch

from backdoor_bench.attacks.base import Attack
from backdoor_bench.attacks.triggers import Patch, stamp_all
from backdoor_bench.errors import ConfigError


class AdapPatch(Attack):
    """Args (beyond `Attack`'s): `train_patches` and `test_patches` (lists of `Patch` fields:
    size, location, margin, pattern, value, seed, alpha), `cover_rate` (a fraction of the set)."""

    def __init__(self, train_patches=(), test_patches=(), cover_rate: float = 0.01, **kw):
        super().__init__(**kw)
        if not train_patches or not test_patches:
            raise ConfigError("attack.train_patches and attack.test_patches need at least one patch each")
        if not 0 <= float(cover_rate) <= 1:
            raise ConfigError(f"attack.cover_rate={cover_rate} is out of range: use a fraction in [0, 1]")
        self.train_patches = [Patch.from_cfg(p, f"attack.train_patches[{i}]") for i, p in enumerate(train_patches)]
        self.test_patches = [Patch.from_cfg(p, f"attack.test_patches[{i}]") for i, p in enumerate(test_patches)]
        self.cover_rate = float(cover_rate)

    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        for p in self.train_patches + self.test_patches:
            p.check(*shape[1:])

    def apply(self, x):
        return stamp_all(self.test_patches, x)

    def stamp(self, x, index, generator):
        """Block b of k consecutive blocks (in index order) gets training patch b."""
        k, out = len(self.train_patches), x.clone()
        block = torch.arange(len(x)) * k // max(len(x), 1)
        for b, p in enumerate(self.train_patches):
            sel = block == b
            if sel.any():
                out[sel] = p.stamp(x[sel])
        return out

    def n_cover(self, n_poison, n_train):
        return int(round(self.cover_rate * n_train))

    def stamp_cover(self, x, index, generator):
        return self.stamp(x, index, generator)
