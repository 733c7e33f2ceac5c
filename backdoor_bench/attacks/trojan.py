"""TrojanNN (Liu et al., NDSS 2018), as a poisoning attack (the Trojan of Chen, Wu, Wang, NeurIPS
2022; BackdoorBench's `trojannn`, config/attack/trojannn/preactresnet18.yaml).

1. The attacker trains a clean model (the run's model on the clean training set; cached and
   shared with other attacks through `AttackTools.clean_model`).
2. In its penultimate layer it picks the `neurons` units most strongly connected to the next
   layer (largest summed |weight| into the classifier head; TrojanNN Section 4).
3. Inside a fixed mask (a square patch) it optimises the trigger pixels so that those units
   reach `neuron_value` on triggered clean images: minimise mean (f_j(x') - value)^2 with Adam
   over `steps` batches (pixels parametrised through a sigmoid to stay in [0, 1]).
4. The poisoned set stamps the optimised patch (replacing the masked pixels); a fresh model is
   trained on it by the run. BackdoorBench: 2 neurons, value 100; its mask is an apple logo, ours a
   `size` x `size` square (Chen, Wu, Wang use a square trigger). The patch replaces the pixels,
   as in BackdoorBench; their official code adds its trigger array to the image instead.
The trigger is cached by the attack config and the surrogate's spec.

Known limitation: on the CIFAR-10 JPEG copy with a width-16 PreActResNet-18 surrogate the
optimisation did not raise the chosen units (mean 0.46 -> 0.44 over 500 steps), so the trigger
was in effect a fixed random-colour patch; TrojanNN selects neurons in an internal layer and
uses a larger mask (a follow-up).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from backdoor_bench.attacks.base import Attack
from backdoor_bench.attacks.triggers import Patch
from backdoor_bench.errors import ConfigError

log = logging.getLogger(__name__)


class TrojanNN(Attack):
    """Args (beyond `Attack`'s): the mask (`size`, `location`, `margin`), `neurons`, `neuron_value`,
    `steps` (at most `trainer.max_stage_steps`), `lr`, `batch_size` (images per optimisation step),
    `surrogate_epochs` (null: the trainer's max_epochs; at most `trainer.max_stage_epochs`)."""

    needs_tools = True

    def __init__(
        self,
        size: int = 5,
        location="bottom_right",
        margin: int = 0,
        neurons: int = 2,
        neuron_value: float = 100.0,
        steps: int = 500,
        lr: float = 0.1,
        batch_size: int = 128,
        surrogate_epochs: int | None = None,
        **kw,
    ):
        super().__init__(**kw)
        if not isinstance(location, str):  # a ListConfig: Patch checks it is [row, col]
            location = list(location) if isinstance(location, Iterable) else location
        self.mask = Patch(size=int(size), location=location, margin=int(margin))
        if int(neurons) < 1 or int(steps) < 1 or int(batch_size) < 1 or float(lr) <= 0:
            raise ConfigError("attack.neurons, attack.steps and attack.batch_size must be >= 1 and attack.lr > 0")
        self.neurons, self.neuron_value = int(neurons), float(neuron_value)
        self.steps, self.lr, self.batch_size = int(steps), float(lr), int(batch_size)
        self._pixels: torch.Tensor | None = None

    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        self.mask.check(*shape[1:])

    def trigger_pixels(self) -> torch.Tensor:
        """The optimised patch, uint8 `[C, size, size]` (built once, then cached)."""
        if self._pixels is None:
            tools = self.require_tools()
            steps = tools.stage_length(self.steps, "steps")
            spec = {
                "attack": "trojan",
                "mask": [self.mask.size, self.mask.location, self.mask.margin],
                "neurons": self.neurons,
                "value": self.neuron_value,
                "steps": steps,
                "lr": self.lr,
                "batch_size": self.batch_size,
                **tools.spec,
            }
            self._pixels = tools.cached("trojan_trigger", spec, lambda: {"pixels": self._optimise(steps)})["pixels"]
        return self._pixels

    def _optimise(self, steps: int) -> torch.Tensor:
        tools = self.require_tools()
        model = tools.clean_model().eval().to(tools.device)
        for p in model.parameters():
            p.requires_grad_(False)
        units = model.head.weight.abs().sum(0).topk(self.neurons).indices  # every model's head is one Linear
        x_all = tools.clean.x
        c, h, wd = x_all.shape[1:]
        r0, c0 = self.mask.origin(h, wd)
        s = self.mask.size
        logit = torch.zeros(c, s, s, device=tools.device, requires_grad=True)
        opt = torch.optim.Adam([logit], lr=self.lr)
        g = torch.Generator().manual_seed(tools.seed)
        for step in range(steps):
            idx = torch.randint(len(x_all), (min(self.batch_size, len(x_all)),), generator=g)
            x = x_all[idx].to(tools.device).float() / 255
            x[..., r0 : r0 + s, c0 : c0 + s] = torch.sigmoid(logit)  # the masked pixels replaced (autograd tracks it)
            act = model.features(x)[:, units]
            loss = ((act - self.neuron_value) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % max(1, steps // 5) == 0 or step == steps - 1:
                log.info(
                    "trojan trigger step %d/%d: mean activation %.2f (target %.1f)",
                    step + 1,
                    steps,
                    act.mean().item(),
                    self.neuron_value,
                )
        return (torch.sigmoid(logit.detach()) * 255).round().to(torch.uint8).cpu()

    def apply(self, x):
        return self.mask.stamp(x, self.trigger_pixels())
