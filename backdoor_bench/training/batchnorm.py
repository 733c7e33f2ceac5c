"""BatchNorm mechanics shared by the model-repair defenses: the model's BatchNorm layers, the
convolution each one normalises, zeroing channels (ANP and CLP prune BatchNorm neurons), and
recomputing the running statistics of a model whose weights were replaced (MCR's point on a curve)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from backdoor_bench.errors import ConfigError

log = logging.getLogger(__name__)


def batchnorm_layers(model: nn.Module, who: str = "this defense") -> list[tuple[str, nn.BatchNorm2d]]:
    """`(name, module)` of every BatchNorm2d of `model` with affine weights, in module order; a
    model without one is a one-line error naming `who` needs them."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.affine]
    if not layers:
        raise ConfigError(
            f"{who} works on BatchNorm channels but the run's model has no BatchNorm2d layer: "
            "choose a model with one (small_cnn, preact_resnet18, resnet18, resnet32)"
        )
    return layers


def conv_bn_pairs(model: nn.Module, who: str = "this defense") -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """`(bn name, conv, bn)` for every BatchNorm2d paired with the convolution registered last before
    it whose output channels it normalises (module order, the assumption of CLP's official code:
    "every conv is followed by a BN"); a BatchNorm without such a convolution is skipped (logged).
    In a pre-activation ResNet a block's first BatchNorm normalises the sum of the previous block's
    convolution and its shortcut and is paired with the convolution registered last."""
    batchnorm_layers(model, who)  # the clear error for a model without BatchNorm
    pairs, conv = [], None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            conv = m
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            if conv is not None and conv.out_channels == m.num_features and conv.groups == 1:
                pairs.append((name, conv, m))
            else:
                log.info(
                    "%s: BatchNorm %s follows no convolution of %d channels: left alone", who, name, m.num_features
                )
    return pairs


@torch.no_grad()
def zero_channels(bn: nn.BatchNorm2d, index: torch.Tensor, bias: bool = True) -> None:
    """Prune channels `index` of `bn`: weight (gamma) 0 and, with `bias`, bias (beta) 0."""
    index = torch.as_tensor(index, dtype=torch.long, device=bn.weight.device)
    bn.weight[index] = 0.0
    if bias:
        bn.bias[index] = 0.0


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, batches) -> None:
    """Replace every BatchNorm's running mean and variance by their averages over `batches` (float
    inputs as the model takes them), each batch weighted by its size (Garipov et al.'s `update_bn`,
    which mode-connectivity curves use because a point on the curve has no statistics of its own).
    The model is left in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
    model.train()
    seen = 0
    try:
        for x in batches:
            b = len(x)
            for m in bns:
                m.momentum = b / (seen + b)  # running = (seen * running + b * batch) / (seen + b)
            model(x)
            seen += b
    finally:
        for m in bns:
            m.momentum = momenta[m]
        model.eval()
