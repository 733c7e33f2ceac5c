"""BppAttack (Wang, Zhai, Ma, "BppAttack: Stealthy and Efficient Trojan Attacks against Deep Neural
Networks via Image Quantization and Contrastive Adversarial Learning", CVPR 2022): the trigger is
colour-depth squeezing to `squeeze_num` levels per channel with Floyd-Steinberg dithering (the
authors' `floydDitherspeed`; `dithering: false` rounds to the levels without error diffusion);
all2one, labels changed, 10% (BackdoorBench's rate; squeeze_num 8 and dithering are the paper's
CIFAR-10 setting as BackdoorBench's config gives it).

Two modes:
- `poison` (default): the poisoning part only, one poisoned stored set.
- `train`: the paper's training (Section 3.3, contrastive adversarial learning) as the authors' code
  and BackdoorBench's `attack/bpp.py` run it (`backdoorbench/bpp`): the stored set stays clean and
  each training batch of the backdoored model is poisoned on the device: its first
  int(`poison_rate` x batch) samples squeezed and relabeled, the next int(`neg_ratio` x batch)
  (only in a batch with a poisoned sample) made "negative" samples that keep their label: the
  image plus the quantisation residual (squeezed minus original) of another, random image,
  clipped. BackdoorBench draws that image from the whole training set; here from the batch.
"""

from __future__ import annotations

import torch

from backdoor_bench.attacks.base import BatchPoisoning
from backdoor_bench.attacks.triggers import dither
from backdoor_bench.errors import ConfigError


class BppAttack(BatchPoisoning):
    """Args (beyond `Attack`'s): `squeeze_num` (levels per channel, >= 2), `dithering`, `mode`
    (`poison` or `train`), `neg_ratio` (mode train: negative samples per batch, as a share of it)."""

    def __init__(self, squeeze_num: int = 8, dithering: bool = True, neg_ratio: float = 0.1, **kw):
        super().__init__(**kw)
        if int(squeeze_num) < 2:
            raise ConfigError(f"attack.squeeze_num={squeeze_num} must be at least 2 levels")
        if not 0.0 <= float(neg_ratio) <= 1.0:
            raise ConfigError(f"attack.neg_ratio={neg_ratio} is out of range: use a fraction of the batch in [0, 1]")
        self.squeeze_num, self.dithering, self.neg_ratio = int(squeeze_num), bool(dithering), float(neg_ratio)

    def apply(self, x):
        if self.dithering:
            return dither(x, self.squeeze_num)
        step = 255.0 / (self.squeeze_num - 1)
        return (torch.round(x.double() / step) * step).round().clamp(0, 255).to(torch.uint8)

    def poison_spec(self, cfg):
        """`neg_ratio` only matters in mode train: out of the spec otherwise (older keys kept)."""
        spec = super().poison_spec(cfg)
        if not self.trains_batches:
            spec.pop("neg_ratio", None)
        return spec

    # -- mode=train: every batch ------------------------------------------------------------------
    def n_extra(self, n_poisoned, batch_size):
        negatives = int(batch_size * self.neg_ratio)
        if isinstance(n_poisoned, torch.Tensor):
            return (n_poisoned > 0).long() * negatives
        return negatives if n_poisoned else 0

    def batch_trigger(self, x):
        return self.apply((x * 255).round().to(torch.uint8)).to(x.dtype) / 255

    def batch_extra(self, x, triggered, generator):
        other = torch.randint(0, len(x), (len(x),), generator=generator, device=x.device)
        return (x + (triggered - x)[other]).clamp(0, 1)
