"""Optimizer and schedule from the trainer config (`trainer.optimizer`)."""

from __future__ import annotations

import math

import torch

from backdoor_bench.errors import ConfigError


def configure_optimizers(params, optim: dict, max_epochs: int):
    """SGD or Adam (optional `betas`, torch's (0.9, 0.999) by default) with a per-epoch cosine
    (T_max = the run's epochs, not a hard-coded 100), step or constant schedule. The cosine takes two optional keys: `eta_min_factor` (the floor,
    as a share of lr) and `warmup_epochs` (a linear ramp from `warmup_from` to the cosine's value
    at the warm-up's end; SupContrast's recipe, used by D-ST's encoder in the official code of
    Chen, Wu, Wang, NeurIPS 2022)."""
    name, lr, wd = (
        optim.get("name", "sgd"),
        float(optim["lr"]),
        float(optim.get("weight_decay", 0.0)),
    )
    if name == "sgd":
        opt = torch.optim.SGD(
            params,
            lr=lr,
            momentum=float(optim.get("momentum", 0.9)),
            weight_decay=wd,
            nesterov=bool(optim.get("nesterov", False)),
        )
    elif name == "adam":
        opt = torch.optim.Adam(
            params,
            lr=lr,
            weight_decay=wd,
            betas=tuple(float(b) for b in optim.get("betas") or (0.9, 0.999)),
        )
    else:
        raise ConfigError(f"trainer.optimizer.name={name!r} is unknown: use sgd or adam")
    schedule = optim.get("schedule", "cosine")
    if schedule == "cosine" and int(optim.get("warmup_epochs") or 0) > 0:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(optim, max_epochs))
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(1, max_epochs), eta_min=lr * float(optim.get("eta_min_factor") or 0.0)
        )
    elif schedule == "step":
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, list(optim.get("milestones", [])), float(optim.get("gamma", 0.1))
        )
    elif schedule == "constant":
        return opt
    else:
        raise ConfigError(f"trainer.optimizer.schedule={schedule!r} is unknown: use cosine, step or constant")
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def warmup_cosine(optim: dict, max_epochs: int):
    """The lr factor per epoch: cosine from lr to lr * `eta_min_factor` over `max_epochs`, with a
    linear warm-up from `warmup_from` over the first `warmup_epochs` (per epoch, not per step)."""
    lr, w = float(optim["lr"]), int(optim["warmup_epochs"])
    floor, start = (
        lr * float(optim.get("eta_min_factor") or 0.0),
        float(optim.get("warmup_from", 0.01)),
    )

    def cosine(e: int) -> float:
        return floor + (lr - floor) * (1 + math.cos(math.pi * e / max(1, max_epochs))) / 2

    def factor(e: int) -> float:
        return (start + (cosine(w) - start) * e / w if e < w else cosine(e)) / lr

    return factor
