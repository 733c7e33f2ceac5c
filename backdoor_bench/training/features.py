"""Activations of a chosen layer, for the feature-space cleansers (Spectral Signatures, Activation
Clustering). Both papers score the activations of one layer of the backdoored network, and which
layer works best depends on the architecture (the ISPL paper, "Defending Against Backdoor Attacks
Using Ensembles of Weak Learners", appendix B.1), so the layer is a config
value: `None` is `model.features` (the penultimate vector), any other value a submodule name as
`model.named_modules()` spells it (e.g. `backbone.layer3.1`).

How a feature map [N, C, H, W] becomes one vector per sample (`activations`): `flatten` (the
default) keeps every unit, [N, C*H*W], as Tran et al.'s released code does (it reshapes the chosen
layer's output for each image into one long vector before the SVD) and as ART's ActivationDefence
and SpectralSignatureDefense do since the fix for ART issue #2313 (before it they used the layer
output as returned); `pool` averages each channel over space, [N, C] (smaller and
translation-invariant, but it can blur a small local trigger into the channel means)."""

from __future__ import annotations

import torch

from backdoor_bench.errors import ConfigError
from backdoor_bench.training.fit import extract_features, over_batches


def resolve_layer(model: torch.nn.Module, layer: str) -> torch.nn.Module:
    """The submodule called `layer`; a ConfigError listing the valid names when there is none."""
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        names = ", ".join(name for name in modules if name)
        raise ConfigError(
            f"defense.layer={layer!r} is not a layer of {type(model).__name__}: use null "
            f"(the penultimate features) or one of: {names}"
        )
    return modules[layer]


ACTIVATIONS = ("flatten", "pool")


def shape_activations(out: torch.Tensor, activations: str = "flatten") -> torch.Tensor:
    """[N, D] from a layer's output [N, ...]: feature maps [N, C, H, W] flattened to [N, C*H*W]
    (channel-major, as `torch.flatten`) or, with `activations="pool"`, averaged over space to
    [N, C]; any other output flattened."""
    if activations not in ACTIVATIONS:
        raise ConfigError(f"defense.activations={activations!r} is unknown: use one of {', '.join(ACTIVATIONS)}")
    if out.ndim == 4 and activations == "pool":
        return out.mean((2, 3))
    return out.flatten(1)


def layer_features(
    model: torch.nn.Module,
    x: torch.Tensor,
    layer: str | None = None,
    batch_size: int = 512,
    device="cpu",
    activations: str = "flatten",
) -> torch.Tensor:
    """[N, D] activations of uint8 images `x` at `layer` (model in eval mode, on CPU), captured
    from the layer's output with a forward hook and shaped by `shape_activations` (feature maps
    flattened, or averaged over space with `activations="pool"`). `layer=None` returns
    `model.features`, already one vector per sample."""
    shape_activations(torch.zeros(1, 1), activations)  # a bad setting fails before any forward pass
    if layer is None:
        return extract_features(model, x, batch_size, device)
    module, captured = resolve_layer(model, layer), []

    def hook(_module, _inputs, output):
        captured.append(output)

    def step(i, xb):
        captured.clear()
        model(xb.float().div_(255))
        return shape_activations(captured[0].float(), activations)

    handle = module.register_forward_hook(hook)
    try:
        return over_batches(model, x, step, batch_size, device)
    finally:
        handle.remove()
