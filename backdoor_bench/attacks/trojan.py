"""TrojanNN (Liu et al., NDSS 2018), as a poisoning attack (the Trojan of Chen, Wu, Wang, NeurIPS
2022; BackdoorBench's `trojannn`, config/attack/trojannn/preactresnet18.yaml).

1. The attacker trains a clean model (the run's model on the clean training set; cached and
   shared with other attacks through `AttackTools.clean_model`).
2. In an internal `layer` of it (a module name; null: the penultimate features) it picks the
   `neurons` units that respond most to the masked region: over a batch of clean images whose
   masked pixels are filled with 8 random patterns, the units whose activation (a channel's
   spatial mean in a feature map) varies most, averaged over the images. TrojanNN (Sec. 4) picks
   units that the trigger region can drive; this is that criterion measured directly.
3. Inside the fixed mask (a square patch) the trigger pixels step by signed gradients (`lr` per
   step, pixels in [0, 1]) to bring those units to `neuron_value` on triggered clean images:
   minimise mean (f_j(x') - value)^2 over `steps` batches, at most `trainer.max_stage_steps`.
4. The poisoned set stamps the optimised patch (replacing the masked pixels, as BackdoorBench);
   a fresh model is trained on it by the run. BackdoorBench: 2 neurons, value 100; its mask is an
   apple logo, ours a `size` x `size` square (Chen, Wu, Wang use a square trigger).
The trigger is cached by the attack config and the surrogate's spec; the units' mean activation
before and after is logged and kept in the cache entry.

`trigger_path` (the asset `dst_trojan_trigger`, D-ST/D-BR's `best_square_trigger_cifar10.npz`, or a
file of yours: an array HW, HWC or CHW in pixel levels) skips the optimisation: the array is ADDED
to the image and clipped, as their `_trojanTrigger` does (their uint8 cast wraps before the clip;
ours clips).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from backdoor_bench.attacks.base import Attack
from backdoor_bench.attacks.triggers import Patch, check_pattern_file, load_array, to_chw, with_file_hash
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.features import captured

log = logging.getLogger(__name__)

FILLS = 8  # random fillings of the mask when selecting units


class TrojanNN(Attack):
    """Args (beyond `Attack`'s): the mask (`size`, `location`, `margin`), `layer` (null: the
    penultimate features), `neurons`, `neuron_value`, `steps` (at most `trainer.max_stage_steps`),
    `lr` (the signed step, in [0, 1] pixel units), `batch_size` (images per step),
    `surrogate_epochs` (null: the trainer's max_epochs; at most `trainer.max_stage_epochs`),
    `trigger_path` (a fixed additive trigger instead)."""

    needs_tools = True

    def __init__(
        self,
        size: int = 5,
        location="bottom_right",
        margin: int = 0,
        layer: str | None = None,
        neurons: int = 2,
        neuron_value: float = 100.0,
        steps: int = 500,
        lr: float = 0.01,
        batch_size: int = 128,
        surrogate_epochs: int | None = None,
        trigger_path: str | None = None,
        **kw,
    ):
        super().__init__(**kw)
        if not isinstance(location, str):  # a ListConfig: Patch checks it is [row, col]
            location = list(location) if isinstance(location, Iterable) else location
        self.mask = Patch(size=int(size), location=location, margin=int(margin))
        if int(neurons) < 1 or int(steps) < 1 or int(batch_size) < 1 or float(lr) <= 0:
            raise ConfigError("attack.neurons, attack.steps and attack.batch_size must be >= 1 and attack.lr > 0")
        if trigger_path:
            check_pattern_file(trigger_path, "attack.trigger_path")
        self.layer, self.neurons, self.neuron_value = layer, int(neurons), float(neuron_value)
        self.steps, self.lr, self.batch_size = int(steps), float(lr), int(batch_size)
        self.trigger_path = trigger_path
        self.needs_tools = not trigger_path  # a fixed trigger trains nothing
        self._pixels: torch.Tensor | None = None

    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        self.mask.check(*shape[1:])

    def poison_spec(self, cfg):
        return with_file_hash(super().poison_spec(cfg), "trigger", self.trigger_path)

    def trigger_pixels(self) -> torch.Tensor:
        """The optimised patch, uint8 `[C, size, size]` (built once, then cached)."""
        if self._pixels is None:
            tools = self.require_tools()
            steps = tools.stage_length(self.steps, "steps")
            spec = {
                "attack": "trojan",
                "mask": [self.mask.size, self.mask.location, self.mask.margin],
                "layer": self.layer,
                "neurons": self.neurons,
                "value": self.neuron_value,
                "steps": steps,
                "lr": self.lr,
                "batch_size": self.batch_size,
                "optimiser": "sign",
                **tools.spec,
            }
            self._pixels = tools.cached("trojan_trigger", spec, lambda: self.optimise(steps))["pixels"]
        return self._pixels

    def activation(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Every unit's activation `[N, U]` at `layer` (a feature map's channels averaged over space)."""
        if self.layer is None:
            out = model.features(x)
        else:
            with captured(model, [self.layer], key="layer") as got:
                model(x)
            out = got[self.layer]
        return out.flatten(2).mean(2) if out.ndim > 2 else out

    def paste(self, x: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        """Float images `[N, C, H, W]` with the masked pixels replaced by `patch` (autograd tracks it)."""
        r0, c0 = self.mask.origin(*x.shape[-2:])
        s = self.mask.size
        x = x.clone()
        x[..., r0 : r0 + s, c0 : c0 + s] = patch
        return x

    def select_units(self, model: torch.nn.Module, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """The `neurons` units whose activation varies most as the masked region changes."""
        c, s = x.shape[1], self.mask.size
        with torch.no_grad():
            acts = torch.stack(
                [
                    self.activation(model, self.paste(x, torch.rand(c, s, s, generator=g).to(x.device)))
                    for _ in range(FILLS)
                ]
            )
        response = acts.std(0).mean(0)
        if self.neurons > len(response):
            raise ConfigError(f"attack.neurons={self.neurons} exceeds the {len(response)} units of attack.layer")
        return response.topk(self.neurons).indices

    def optimise(self, steps: int) -> dict:
        """Select the units, then `steps` signed-gradient steps on the patch. The payload: the
        patch (uint8), the units, and their mean activation before and after."""
        tools = self.require_tools()
        model = tools.clean_model().eval().to(tools.device)
        for p in model.parameters():
            p.requires_grad_(False)
        x_all, dev = tools.clean.x, tools.device
        g = torch.Generator().manual_seed(tools.seed)

        def batch():
            idx = torch.randint(len(x_all), (min(self.batch_size, len(x_all)),), generator=g)
            return x_all[idx].to(dev).float() / 255

        probe = batch()
        units = self.select_units(model, probe, g)
        patch = torch.rand(x_all.shape[1], self.mask.size, self.mask.size, generator=g).to(dev)

        def mean_activation(p):
            with torch.no_grad():
                return self.activation(model, self.paste(probe, p))[:, units].mean().item()

        before = mean_activation(patch)
        for _ in range(steps):
            patch.requires_grad_(True)
            act = self.activation(model, self.paste(batch(), patch))[:, units]
            (grad,) = torch.autograd.grad(((act - self.neuron_value) ** 2).mean(), patch)
            patch = (patch.detach() - self.lr * grad.sign()).clamp(0, 1)
        after = mean_activation(patch)
        log.info(
            "trojan trigger: units %s of %s, mean activation %.3f -> %.3f over %d signed steps (target %.1f)",
            units.tolist(),
            self.layer or "the penultimate features",
            before,
            after,
            steps,
            self.neuron_value,
        )
        pixels = (patch * 255).round().to(torch.uint8).cpu()
        return {"pixels": pixels, "units": units.cpu(), "activation_before": before, "activation_after": after}

    def apply(self, x):
        if self.trigger_path:
            trigger = to_chw(load_array(Path(self.trigger_path).expanduser()), tuple(x.shape[1:])).to(x.device)
            return (x.double() + trigger).round().clamp(0, 255).to(torch.uint8)
        return self.mask.stamp(x, self.trigger_pixels())
