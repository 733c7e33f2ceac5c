"""MCR: mode connectivity repair (Zhao, Chen, Das, Ramamurthy, Lin, "Bridging Mode Connectivity in
Loss Landscapes and Adversarial Robustness", ICLR 2020, Sec. 2 Eq. 2-4 and Sec. 3).

Two end models are joined by a quadratic Bezier curve in weight space,

    phi_theta(t) = (1 - t)^2 w0 + 2 t (1 - t) theta + t^2 w1,   t in [0, 1],

with w0 the backdoored model and w1 its copy fine-tuned on the trusted clean subset (the paper's
repair of a single tampered model, as BackdoorBench runs it). Only the control point theta is
trained, on the clean subset: per batch a fresh t ~ U(0, 1) and the cross-entropy of the model with
weights phi_theta(t) (Eq. 4), plus Garipov et al.'s L2 regulariser 0.5 wd |phi_theta(t)|^2. theta
starts at the midpoint (w0 + w1) / 2 (the official code's linear initialisation). The repaired
model is the point at `t`, with its BatchNorm running statistics recomputed on the clean subset (a
point on the curve has none of its own). The curve's weights are evaluated with
`torch.func.functional_call`; BatchNorm uses batch statistics while the curve trains.

Values: the curve trains for 100 epochs, batch 128, SGD lr 0.01, momentum 0.9, wd 1e-4, with the
official code's schedule (lr constant for the first half, then linear down to 1% of it at 90% of
the epochs; github.com/IBM/model-sanitization, backdoor/backdoor-cifar/train.py; BackdoorBench
trains it with lr 3e-5, wd 5e-4 and a cosine schedule); the end point w1
is fine-tuned for 100 epochs with SGD 0.01, momentum 0.9, wd 5e-4 and a cosine schedule
(BackdoorBench's config/defense/mcr: ft_epochs, ft_lr; the paper leaves it open). t = 0.3 is
the point D-BR (Chen, Wu, Wang, NeurIPS 2022, App. C.4) evaluates MCR at; we could not check that
appendix's text, and BackdoorBench's config.yaml evaluates t = 0.1 (its cifar10.yaml sweeps 0.1 to 0.9).
1% clean training data: D-BR's Sec. 4.1. `min_steps` (0 = the paper) floors the optimizer steps of
the fine-tuning and of the curve: on a small dataset 100 epochs of a 1% subset are 100 steps.
"""

from __future__ import annotations

import copy
import logging

import pytorch_lightning as pl
import torch
from torch import nn
from torch.func import functional_call

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.batchnorm import recompute_bn_statistics
from backdoor_bench.training.losses import cross_entropy
from backdoor_bench.training.optim import configure_optimizers

log = logging.getLogger(__name__)


def bezier(w0: torch.Tensor, theta: torch.Tensor, w1: torch.Tensor, t: float) -> torch.Tensor:
    """The quadratic Bezier curve's point at t: (1 - t)^2 w0 + 2 t (1 - t) theta + t^2 w1."""
    return (1 - t) ** 2 * w0 + 2 * t * (1 - t) * theta + t**2 * w1


def curve_lr_factor(epoch: int, epochs: int) -> float:
    """The lr factor of the mode-connectivity code's schedule at (0-based) `epoch` of `epochs`:
    1 up to half the run, then linearly down to 0.01 at 90%, then 0.01 (its 1-based epoch e is
    our epoch + 1)."""
    a = (epoch + 1) / max(1, epochs)
    if a <= 0.5:
        return 1.0
    if a <= 0.9:
        return 1.0 - (a - 0.5) / 0.4 * 0.99
    return 0.01


def curve_point(model: nn.Module, w0: dict, theta: dict, w1: dict, t: float) -> nn.Module:
    """A copy of `model` whose parameters are the curve's point at t (running statistics untouched)."""
    point = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in point.named_parameters():
            p.copy_(bezier(w0[name], theta[name], w1[name], t))
    return point


class BezierCurve(pl.LightningModule):
    """Trains the control point theta of the curve between `start` and `end` (fixed): per batch,
    t ~ U(0, 1), CE of the model at phi_theta(t) plus 0.5 wd |phi_theta(t)|^2."""

    def __init__(
        self,
        start: nn.Module,
        end: nn.Module,
        lr: float,
        momentum: float,
        weight_decay: float,
        epochs: int,
        seed: int = 0,
        channels_last: bool = False,
    ):
        super().__init__()
        self.model = copy.deepcopy(start).requires_grad_(False)  # the architecture and its BatchNorm buffers
        self.names = [n for n, _ in start.named_parameters()]
        w0, w1 = dict(start.named_parameters()), dict(end.named_parameters())
        for i, n in enumerate(self.names):
            self.register_buffer(f"w0_{i}", w0[n].detach().clone())
            self.register_buffer(f"w1_{i}", w1[n].detach().clone())
        self.theta = nn.ParameterList([nn.Parameter((w0[n].detach() + w1[n].detach()) / 2) for n in self.names])
        self.lr, self.momentum, self.weight_decay, self.epochs = lr, momentum, weight_decay, epochs
        self.seed, self.channels_last = seed, channels_last
        self._generator = None

    def end_points(self) -> tuple[dict, dict, dict]:
        """(w0, theta, w1) as `{parameter name: tensor}`."""
        w0 = {n: getattr(self, f"w0_{i}") for i, n in enumerate(self.names)}
        w1 = {n: getattr(self, f"w1_{i}") for i, n in enumerate(self.names)}
        return w0, {n: p for n, p in zip(self.names, self.theta)}, w1

    def weights(self, t: float) -> dict[str, torch.Tensor]:
        w0, theta, w1 = self.end_points()
        return {n: bezier(w0[n], theta[n], w1[n], t) for n in self.names}

    def training_step(self, batch, batch_idx):
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        t = float(torch.rand((), generator=self._generator))
        x = batch["x"].contiguous(memory_format=torch.channels_last) if self.channels_last else batch["x"]
        w = self.weights(t)
        ce = cross_entropy(functional_call(self.model, w, (x,)), batch["y"])
        l2 = sum(v.pow(2).sum() for v in w.values())
        self.log("mcr/curve_ce", ce, on_step=False, on_epoch=True, batch_size=len(batch["y"]))
        return ce + 0.5 * self.weight_decay * l2

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.theta.parameters(), lr=self.lr, momentum=self.momentum)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: curve_lr_factor(e, self.epochs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class MCR(Defense):
    """Args: `t` (0.3: the point of the curve kept), `finetune` (the end point w1: epochs,
    batch_size, optimizer), `curve` (epochs, batch_size, lr, momentum, weight_decay), `min_steps`
    (a floor on the optimizer steps of each stage, 0 = none)."""

    needs_clean = True

    def __init__(
        self,
        name: str = "mcr",
        t: float = 0.3,
        finetune: dict | None = None,
        curve: dict | None = None,
        min_steps: int = 0,
        **kw,
    ):
        super().__init__(name=name, **kw)
        if not 0 <= float(t) <= 1:
            raise ConfigError(
                f"defense.t={t} must be in [0, 1]: the curve runs from the backdoored model (0) to w1 (1)"
            )
        ft = {"epochs": 100, "batch_size": 128, "optimizer": None, **dict(finetune or {})}
        cv = {"epochs": 100, "batch_size": 128, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, **dict(curve or {})}
        for key, value in (
            ("finetune.epochs", ft["epochs"]),
            ("finetune.batch_size", ft["batch_size"]),
            ("curve.epochs", cv["epochs"]),
            ("curve.batch_size", cv["batch_size"]),
        ):
            if int(value) < 1:
                raise ConfigError(f"defense.{key}={value} must be >= 1")
        if float(cv["lr"]) <= 0 or float(cv["weight_decay"]) < 0 or not 0 <= float(cv["momentum"]) < 1:
            raise ConfigError(
                f"defense.curve.lr={cv['lr']}, weight_decay={cv['weight_decay']}, momentum={cv['momentum']} "
                "must be > 0, >= 0 and in [0, 1)"
            )
        if int(min_steps) < 0:
            raise ConfigError(f"defense.min_steps={min_steps} must be >= 0")
        optim = ft["optimizer"]
        ft["optimizer"] = (
            dict(optim)
            if optim is not None
            else {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine"}
        )
        configure_optimizers([torch.zeros(1, requires_grad=True)], ft["optimizer"], 1)  # a bad optimizer fails here
        self.t, self.ft, self.cv, self.min_steps = float(t), ft, cv, int(min_steps)

    def run(self, ctx: DefenseContext) -> Outcome:
        clean = ctx.clean
        backdoored = copy.deepcopy(ctx.backdoored_model()).cpu()
        ft_epochs = ctx.stage_epochs(self.ft["epochs"], len(clean), int(self.ft["batch_size"]), self.min_steps)
        log.info("MCR: fine-tuning the end point w1 for %d epochs on %d clean samples", ft_epochs, len(clean))
        end = ctx.finetune(
            copy.deepcopy(backdoored),
            "mcr_finetune",
            ft_epochs,
            optimizer=self.ft["optimizer"],
            batch_size=int(self.ft["batch_size"]),
        ).cpu()

        epochs = ctx.stage_epochs(self.cv["epochs"], len(clean), int(self.cv["batch_size"]), self.min_steps)
        log.info("MCR: training the Bezier curve's control point for %d epochs", epochs)
        module = BezierCurve(
            backdoored,
            end,
            float(self.cv["lr"]),
            float(self.cv["momentum"]),
            float(self.cv["weight_decay"]),
            epochs,
            seed=ctx.seed,
            channels_last=ctx.channels_last,
        )
        ctx.fit("mcr_curve", module, clean, epochs, resumable=True, batch_size=int(self.cv["batch_size"]))
        module = module.cpu()
        w0, theta, w1 = module.end_points()
        model = curve_point(backdoored, w0, theta, w1, self.t)
        bs = int(self.cv["batch_size"])
        recompute_bn_statistics(model, (clean.x[i : i + bs].float() / 255 for i in range(0, len(clean), bs)))
        log.info("MCR: the model at t=%.2f, BatchNorm statistics recomputed on the clean subset", self.t)
        extra = {"t": self.t, "finetune_epochs": ft_epochs, "curve_epochs": epochs, "n_clean": len(clean)}
        return Outcome(model=model, extra=extra)
