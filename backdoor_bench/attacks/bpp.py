"""BppAttack (Wang, Zhai, Ma, "BppAttack: Stealthy and Efficient Trojan Attacks against Deep Neural
Networks via Image Quantization and Contrastive Adversarial Learning", CVPR 2022), its poisoning
part: the trigger is colour-depth squeezing to `squeeze_num` levels per channel with Floyd-Steinberg
dithering (the authors' `floydDitherspeed`; `dithering: false` rounds to the levels without error
diffusion); all2one, labels changed, 10% (BackdoorBench's rate; squeeze_num 8 and dithering are the
paper's CIFAR-10 setting as BackdoorBench's config gives it).

Left out: BppAttack trains the victim with contrastive adversarial "negative" samples (images
perturbed by an adversarial attack and then quantised, kept with their true label) generated
anew in every batch; that is a training-controlled part this poisoning-only version does not
have, so its ASR and stealth against defenses may differ from the paper's.
"""

from __future__ import annotations

import torch

from backdoor_bench.attacks.base import Attack
from backdoor_bench.attacks.triggers import dither
from backdoor_bench.errors import ConfigError


class BppAttack(Attack):
    """Args (beyond `Attack`'s): `squeeze_num` (levels per channel, >= 2), `dithering`."""

    def __init__(self, squeeze_num: int = 8, dithering: bool = True, **kw):
        super().__init__(**kw)
        if int(squeeze_num) < 2:
            raise ConfigError(f"attack.squeeze_num={squeeze_num} must be at least 2 levels")
        self.squeeze_num, self.dithering = int(squeeze_num), bool(dithering)

    def apply(self, x):
        if self.dithering:
            return dither(x, self.squeeze_num)
        step = 255.0 / (self.squeeze_num - 1)
        return (torch.round(x.double() / step) * step).round().clamp(0, 255).to(torch.uint8)
