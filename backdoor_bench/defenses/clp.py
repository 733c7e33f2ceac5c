"""CLP: channel Lipschitzness-based pruning (Zheng, Zhang, Wagner, Goldblum, Han, "Data-free
Backdoor Removal based on Channel Lipschitzness", ECCV 2022, Sec. 3.3-3.4, Eq. 7-9 and Algorithm 1).

Data-free: a backdoor rides on channels that amplify a small trigger strongly, i.e. channels with
a large Lipschitz constant. For a convolution followed by BatchNorm, channel k's map x -> BN_k(W_k * x)
has the upper bound (UCLC)

    UCLC_k = |gamma_k / sigma_k| * sigma_max(W_k),

W_k the channel's kernel reshaped to [in channels, kh * kw], sigma_max its largest singular value,
gamma_k the BatchNorm weight and sigma_k = sqrt(running_var_k + eps) its running standard
deviation. Within each layer, the channels with UCLC_k > mean + u x std of the layer's UCLCs are
pruned: their BatchNorm weight and bias are set to 0 (the official code,
github.com/rkteddy/channel-Lipschitzness-based-pruning, which also pairs each BatchNorm with the
convolution registered before it; see training/batchnorm.py). u = 3 is the paper's default (Sec.
4.1) and BackdoorBench's; the std is the sample standard deviation (n - 1), as torch's `std` in the
official code. The official code divides by sqrt(running_var) without BatchNorm's eps; we use the
standard deviation BatchNorm divides by.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.batchnorm import conv_bn_pairs, zero_channels

log = logging.getLogger(__name__)


@torch.no_grad()
def channel_lipschitz_bounds(conv_weight: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """UCLC of every output channel: |gamma_k| / sqrt(var_k + eps) x the largest singular value of
    the channel's kernel reshaped to [in channels, kh * kw]."""
    w = conv_weight.detach().double()
    kernels = w.reshape(w.shape[0], w.shape[1], -1)
    sigma_max = torch.linalg.matrix_norm(kernels, ord=2)  # the largest singular value, per channel
    scale = bn.weight.detach().double().abs() / (bn.running_var.detach().double() + bn.eps).sqrt()
    return (sigma_max * scale).float()


def outlying_channels(uclc: torch.Tensor, u: float) -> torch.Tensor:
    """Channels whose bound exceeds the layer's mean + u x (sample) standard deviation."""
    return (uclc > uclc.mean() + u * uclc.std()).nonzero().flatten()


def clp_prune(model: nn.Module, u: float) -> dict[str, list[int]]:
    """Prune `model` in place; returns `{BatchNorm name: pruned channels}` of every paired layer."""
    pruned = {}
    for name, conv, bn in conv_bn_pairs(model, "CLP"):
        index = outlying_channels(channel_lipschitz_bounds(conv.weight, bn), u)
        zero_channels(bn, index, bias=True)
        pruned[name] = index.tolist()
        if len(index):
            log.info("CLP: %s: pruned %d of %d channels", name, len(index), bn.num_features)
    return pruned


class CLP(Defense):
    """Args: `u` (3: the threshold in standard deviations above the layer's mean)."""

    def __init__(self, name: str = "clp", u: float = 3.0, **kw):
        super().__init__(name=name, **kw)
        if not float(u) >= 0:
            raise ConfigError(f"defense.u={u} must be >= 0 (standard deviations above the layer's mean)")
        self.u = float(u)

    def run(self, ctx: DefenseContext) -> Outcome:
        model = copy.deepcopy(ctx.backdoored_model()).cpu().eval()
        pruned = clp_prune(model, self.u)
        n_pruned = sum(len(v) for v in pruned.values())
        n_channels = sum(bn.num_features for _, _, bn in conv_bn_pairs(model, "CLP"))
        log.info("CLP: pruned %d of %d channels in %d layers (u=%g)", n_pruned, n_channels, len(pruned), self.u)
        extra = {
            "u": self.u,
            "n_pruned": n_pruned,
            "n_channels": n_channels,
            "pruned_per_layer": {k: len(v) for k, v in pruned.items() if v},
        }
        return Outcome(model=model, extra=extra)
