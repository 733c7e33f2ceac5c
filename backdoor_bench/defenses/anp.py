"""ANP: Adversarial Neuron Pruning (Wu and Wang, "Adversarial Neuron Pruning Purifies Backdoored
Deep Models", NeurIPS 2021, Sec. 3.3, Eq. 5-6 and Algorithm 1).

A backdoored model collapses under small adversarial perturbations of its neurons, and the neurons
that make it collapse carry the backdoor. ANP treats every BatchNorm2d channel k as a neuron with
weight w_k (gamma) and bias b_k (beta) and learns a mask m_k in [0, 1] on the trusted clean subset:

    min_m  alpha * L(m * w, b) + (1 - alpha) * max_{|delta|, |xi| <= eps} L((m + delta) * w, (1 + xi) * b)

alternating, per batch, (1) the inner maximisation: delta, xi drawn uniformly from [-eps, eps], then
`steps` signed-gradient ascent steps of size eps / steps, each projected back onto [-eps, eps] (the
constraint of Eq. 5; the official code does not clip, so its perturbations reach 2 eps after one
step: `project_perturbation: false`); and
(2) one SGD step (lr 0.2, momentum 0.9) on the masks, which are then clipped to [0, 1]. After
`iterations` batches (2000; batches of 128 drawn with replacement from the clean subset, with the
dataset's augmentation, and BatchNorm on batch statistics, as the official code's `mask_train`),
the neurons whose mask is below `threshold` (0.2) are pruned, in a fresh copy of the backdoored
model (its own running statistics): their BatchNorm weight is set to 0 (the paper's pruning, m_k =
0 on w_k only; `prune_bias: true` also zeroes b_k).

Values: eps 0.4, steps 1, alpha 0.2, lr 0.2, 2000 iterations, batch 128 and the threshold 0.2 are the
paper's (Sec. 4.1) and its official code's (github.com/csdongxian/ANP_backdoor); 1% clean training
data is the paper's setting and the one D-BR (Chen, Wu, Wang, NeurIPS 2022, Sec. 4.1) gives its
baselines. BackdoorBench instead sweeps the pruning threshold against the test set; a defender
cannot, so the threshold is fixed. The perturbations and masks live outside the model: the masked
model is evaluated with `torch.func.functional_call` on substituted BatchNorm weights and biases.
"""

from __future__ import annotations

import copy
import logging
import math

import pytorch_lightning as pl
import torch
from torch import nn
from torch.func import functional_call

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.batchnorm import batchnorm_layers, zero_channels
from backdoor_bench.training.losses import cross_entropy

log = logging.getLogger(__name__)


def masked_bn_params(
    layers: list[tuple[str, nn.BatchNorm2d]],
    masks,
    noise_w=None,
    noise_b=None,
) -> dict[str, torch.Tensor]:
    """The substituted BatchNorm parameters of the masked (and, given `noise_w`, `noise_b`,
    perturbed) model: weight w * (m + delta), bias b * (1 + xi) (Eq. 6; unperturbed: w * m, b)."""
    params = {}
    for i, (name, bn) in enumerate(layers):
        if noise_w is None:
            params[f"{name}.weight"] = bn.weight * masks[i]
        else:
            params[f"{name}.weight"] = bn.weight * (masks[i] + noise_w[i])
            params[f"{name}.bias"] = bn.bias * (1.0 + noise_b[i])
    return params


@torch.no_grad()
def ascend_perturbation(noise: torch.Tensor, grad: torch.Tensor, step: float, eps: float, project: bool = True) -> None:
    """One signed-gradient ascent step on a perturbation, in place: noise <- clip_eps(noise + step *
    sign(grad)), `grad` the gradient of the clean loss; `project=False` skips the clip (the official
    code, whose perturbations reach 2 eps after one step from U(-eps, eps))."""
    noise.add_(step * grad.sign())
    if project:
        noise.clamp_(-eps, eps)


@torch.no_grad()
def clip_masks(masks) -> None:
    """Masks back into [0, 1] after their SGD step, in place."""
    for m in masks:
        m.clamp_(0.0, 1.0)


def pruned_neurons(layers: list[tuple[str, nn.BatchNorm2d]], masks, threshold: float) -> dict[str, list[int]]:
    """`{layer name: [channels]}` whose mask is below `threshold`."""
    return {name: (m.detach() < threshold).nonzero().flatten().tolist() for (name, _), m in zip(layers, masks)}


class _Replacement:
    """`epochs` epochs of `per_epoch` batches drawn with replacement from uint8 `x`, augmented on
    the device (the official code's `RandomSampler(replacement=True)`)."""

    def __init__(self, x, y, batch_size: int, per_epoch: int, augment, device, seed: int):
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.batch_size, self.per_epoch, self.augment = batch_size, per_epoch, augment
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self):
        for _ in range(self.per_epoch):
            idx = torch.randint(len(self.y), (self.batch_size,), device=self.device, generator=self.generator)
            x = self.x[idx]
            if self.augment is not None:
                x = self.augment(x, self.generator)
            yield {"x": x.float().div_(255), "y": self.y[idx]}


class ANPMasks(pl.LightningModule):
    """Learns the neuron masks of `model` (frozen) with ANP's alternating updates (manual
    optimisation: the perturbation step, then the mask step, per batch)."""

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        steps: int,
        alpha: float,
        lr: float,
        momentum: float,
        seed: int = 0,
        channels_last: bool = False,
        project: bool = True,
    ):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.layers = batchnorm_layers(model, "ANP")
        self.masks = nn.ParameterList([nn.Parameter(torch.ones_like(bn.weight)) for _, bn in self.layers])
        self.noise_w = nn.ParameterList([nn.Parameter(torch.zeros_like(bn.weight)) for _, bn in self.layers])
        self.noise_b = nn.ParameterList([nn.Parameter(torch.zeros_like(bn.weight)) for _, bn in self.layers])
        self.eps, self.steps, self.alpha, self.lr, self.momentum = eps, steps, alpha, lr, momentum
        self.seed, self.channels_last, self.project = seed, channels_last, project
        self.automatic_optimization = False
        self._generator = None

    def logits(self, x: torch.Tensor, perturbed: bool) -> torch.Tensor:
        noise = (self.noise_w, self.noise_b) if perturbed else (None, None)
        return functional_call(self.model, masked_bn_params(self.layers, self.masks, *noise), (x,))

    @torch.no_grad()
    def _reset_noise(self):
        if self._generator is None:
            self._generator = torch.Generator(device=self.device).manual_seed(self.seed)
        for p in [*self.noise_w, *self.noise_b]:
            p.copy_(torch.rand(p.shape, device=p.device, generator=self._generator) * 2 * self.eps - self.eps)

    def training_step(self, batch, batch_idx):
        mask_opt = self.optimizers()
        x, y = batch["x"], batch["y"]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.eps > 0:
            self._reset_noise()
            noise = [*self.noise_w, *self.noise_b]
            for _ in range(self.steps):
                grads = torch.autograd.grad(cross_entropy(self.logits(x, True), y), noise)
                for p, g in zip(noise, grads):
                    ascend_perturbation(p, g, self.eps / self.steps, self.eps, self.project)
            loss_rob = cross_entropy(self.logits(x, True), y)
        else:
            loss_rob = torch.zeros((), device=x.device)
        loss_nat = cross_entropy(self.logits(x, False), y)
        loss = self.alpha * loss_nat + (1 - self.alpha) * loss_rob
        mask_opt.zero_grad()
        self.manual_backward(loss)
        mask_opt.step()
        clip_masks(self.masks)
        self.log_dict(
            {"anp/loss_nat": loss_nat, "anp/loss_rob": loss_rob},
            on_step=False,
            on_epoch=True,
            batch_size=len(y),
        )

    def on_train_epoch_end(self):
        values = torch.cat([m.detach().flatten() for m in self.masks])
        self.log("anp/mask_mean", values.mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.masks.parameters(), lr=self.lr, momentum=self.momentum)


class ANP(Defense):
    """Args: `eps` (0.4), `steps` (1), `alpha` (0.2), `iterations` (2000 mask updates),
    `log_every` (iterations per logged epoch, 500), `batch_size` (128), `lr` (0.2), `momentum`
    (0.9), `threshold` (0.2), `prune_bias` (false: the paper's pruning zeroes gamma only),
    `project_perturbation` (true: perturbations stay in [-eps, eps], the paper's constraint; false:
    the official code's unclipped step)."""

    needs_clean = True

    def __init__(
        self,
        name: str = "anp",
        eps: float = 0.4,
        steps: int = 1,
        alpha: float = 0.2,
        iterations: int = 2000,
        log_every: int = 500,
        batch_size: int = 128,
        lr: float = 0.2,
        momentum: float = 0.9,
        threshold: float = 0.2,
        prune_bias: bool = False,
        project_perturbation: bool = True,
        **kw,
    ):
        super().__init__(name=name, **kw)
        checks = {
            "eps": (eps, float(eps) >= 0, "be >= 0"),
            "steps": (steps, int(steps) >= 1, "be >= 1"),
            "alpha": (alpha, 0 <= float(alpha) <= 1, "be in [0, 1]"),
            "iterations": (iterations, int(iterations) >= 1, "be >= 1"),
            "log_every": (log_every, int(log_every) >= 1, "be >= 1"),
            "batch_size": (batch_size, int(batch_size) >= 1, "be >= 1"),
            "lr": (lr, float(lr) > 0, "be > 0"),
            "momentum": (momentum, 0 <= float(momentum) < 1, "be in [0, 1)"),
            "threshold": (threshold, 0 <= float(threshold) <= 1, "be in [0, 1] (masks live there)"),
        }
        for key, (value, ok, must) in checks.items():
            if not ok:
                raise ConfigError(f"defense.{key}={value} must {must}")
        self.eps, self.steps, self.alpha = float(eps), int(steps), float(alpha)
        self.iterations, self.log_every, self.batch_size = int(iterations), int(log_every), int(batch_size)
        self.lr, self.momentum, self.threshold, self.prune_bias = (
            float(lr),
            float(momentum),
            float(threshold),
            prune_bias,
        )
        self.project_perturbation = bool(project_perturbation)

    def run(self, ctx: DefenseContext) -> Outcome:
        backdoored = ctx.backdoored_model()
        module = ANPMasks(
            copy.deepcopy(backdoored),
            self.eps,
            self.steps,
            self.alpha,
            self.lr,
            self.momentum,
            seed=ctx.seed,
            channels_last=ctx.channels_last,
            project=self.project_perturbation,
        )
        per_epoch = min(self.iterations, self.log_every)
        epochs = ctx.stage_length(math.ceil(self.iterations / per_epoch))
        per_epoch = ctx.stage_length(per_epoch, "steps")
        log.info(
            "ANP: %d BatchNorm neurons in %d layers; %d epochs of %d mask updates on %d clean samples",
            sum(bn.num_features for _, bn in module.layers),
            len(module.layers),
            epochs,
            per_epoch,
            len(ctx.clean),
        )

        def loader(device):
            return _Replacement(
                ctx.clean.x, ctx.clean.y, self.batch_size, per_epoch, ctx.augment, device, seed=ctx.seed
            )

        ctx.fit("anp", module, ctx.clean, epochs, loader=loader)
        masks = [m.detach().cpu() for m in module.masks]
        pruned = pruned_neurons(module.layers, masks, self.threshold)

        model = copy.deepcopy(backdoored).cpu()
        layers = dict(batchnorm_layers(model, "ANP"))
        for name, index in pruned.items():
            if index:
                zero_channels(layers[name], torch.tensor(index), bias=self.prune_bias)
        n_pruned = sum(len(v) for v in pruned.values())
        n_total = sum(len(m) for m in masks)
        log.info("ANP: pruned %d of %d neurons (mask < %.2f)", n_pruned, n_total, self.threshold)
        all_masks = torch.cat(masks)
        extra = {
            "n_pruned": n_pruned,
            "n_neurons": n_total,
            "pruned_per_layer": {k: len(v) for k, v in pruned.items() if v},
            "mask_mean": float(all_masks.mean()),
            "mask_quantiles": [float(q) for q in all_masks.quantile(torch.tensor([0.01, 0.05, 0.25, 0.5]))],
            "iterations": epochs * per_epoch,
            "n_clean": len(ctx.clean),
        }
        return Outcome(model=model, extra=extra)
