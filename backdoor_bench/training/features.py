"""Activations of a chosen layer, for the feature-space cleansers (Spectral Signatures, Activation
Clustering). Both papers score the activations of one layer of the backdoored network, and which
layer works best depends on the architecture (the ISPL paper, "Defending Against Backdoor Attacks
Using Ensembles of Weak Learners", appendix B.1), so the layer is a config
value: `None` is `model.features` (the penultimate vector), `"last_map"` the last feature map
before the global pooling (`last_feature_map`: `backbone.body.6` of small_cnn, `backbone.bn` of
preact_resnet18), any other value a submodule name as `model.named_modules()` spells it (e.g.
`backbone.layer3.1`).

How a feature map [N, C, H, W] becomes one vector per sample (`activations`): `flatten` (the
default) keeps every unit, [N, C*H*W], as Tran et al.'s released code does (it reshapes the chosen
layer's output for each image into one long vector before the SVD) and as ART's ActivationDefence
and SpectralSignatureDefense do since the fix for ART issue #2313 (before it they used the layer
output as returned); `pool` averages each channel over space, [N, C] (smaller and
translation-invariant, but it can blur a small local trigger into the channel means)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from backdoor_bench.errors import ConfigError
from backdoor_bench.training.fit import extract_features, over_batches


def resolve_layer(model: torch.nn.Module, layer: str, key: str = "layer", group: str = "defense") -> torch.nn.Module:
    """The submodule called `layer`; a ConfigError naming `<group>.<key>` and listing the valid
    names when there is none."""
    modules = dict(model.named_modules())
    if not layer or layer not in modules:
        names = ", ".join(name for name in modules if name)
        null = (
            "null (the penultimate features), last_map (the last feature map before the pooling) or "
            if key == "layer"
            else ""
        )
        raise ConfigError(
            f"{group}.{key}={layer!r} is not a layer of {type(model).__name__}: use {null}one of: {names}"
        )
    return modules[layer]


@contextmanager
def captured(model: torch.nn.Module, layers: list[str], key: str = "layers"):
    """Within the block, `out[name]` is the output of each named layer in the latest forward pass
    (forward hooks, removed on exit; gradients flow through). A bad name is a ConfigError naming
    `defense.<key>`."""
    modules = [resolve_layer(model, name, key) for name in layers]
    out: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(_store(out, name)) for m, name in zip(modules, layers)]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def _store(out: dict, name: str):
    def hook(_module, _inputs, output):
        out[name] = output

    return hook


POOLING = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Flatten,
)


@torch.no_grad()
def last_feature_map(model: torch.nn.Module, x: torch.Tensor) -> str:
    """The name of the module that produces the last feature map `[N, C, H, W]` of `model.features`
    before the global pooling: of the modules whose forward returns a 4-d tensor with as many
    channels as `model.features` has dimensions (pooling layers excluded), the one that finishes
    last in a forward pass of the float images `x` (a block that wraps the last convolution
    finishes after it, so the outermost such block is named: `backbone.body.6` for small_cnn,
    `backbone.bn` for preact_resnet18, `backbone.net.layer4` for resnet18, `backbone.layer3`
    for resnet32). Global average pooling makes `model.features(x)[:, c]` the spatial mean of
    channel c of this map."""
    finished: list[tuple[str, torch.Tensor]] = []

    def hook(name):
        def record(module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4 and not isinstance(module, POOLING):
                finished.append((name, output))

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules() if name]
    was_training = model.training
    try:
        model.eval()
        dim = model.features(x).shape[1]
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    names = [name for name, out in finished if out.shape[1] == dim]
    if not names:
        raise RuntimeError(f"{type(model).__name__} has no {dim}-channel feature map before its pooling")
    return names[-1]


ACTIVATIONS = ("flatten", "pool")
LAST_MAP = "last_map"  # the `layer` value that names the model's last feature map before the pooling


def layer_name(model: torch.nn.Module, x: torch.Tensor, layer: str | None) -> str | None:
    """The submodule name `layer` stands for: `LAST_MAP` resolves to `last_feature_map(model, x)`
    (x: a few uint8 images); None and any other name are returned as given."""
    if layer != LAST_MAP:
        return layer
    device = next(model.parameters()).device
    return last_feature_map(model, x[:2].to(device).float().div(255))


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
    `model.features`, already one vector per sample; `layer="last_map"` the last feature map before
    the global pooling (`layer_name`)."""
    shape_activations(torch.zeros(1, 1), activations)  # a bad setting fails before any forward pass
    layer = layer_name(model, x, layer)
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
