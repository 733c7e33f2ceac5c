"""Optimizer and schedule from the trainer config (`trainer.optimizer`)."""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig, OmegaConf

from backdoor_bench.errors import ConfigError


def configure_optimizers(params, optim: dict, max_epochs: int):
    """SGD or Adam, fused (one kernel for all parameters) when every parameter is on a CUDA device,
    torch's default implementation elsewhere (CPU numbers unchanged), (optional `betas`, torch's (0.9, 0.999) by default) with a per-epoch cosine
    (T_max = the run's epochs, not a hard-coded 100), step or constant schedule. The cosine takes two optional keys: `eta_min_factor` (the floor,
    as a share of lr) and `warmup_epochs` (a linear ramp from `warmup_from` to the cosine's value
    at the warm-up's end; SupContrast's recipe, used by D-ST's encoder in the official code of
    Chen, Wu, Wang, NeurIPS 2022)."""
    params = list(params)
    fused = {"fused": True} if params and all(_on_cuda(p) for p in params) else {}
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
            **fused,
        )
    elif name == "adam":
        opt = torch.optim.Adam(
            params,
            lr=lr,
            weight_decay=wd,
            betas=tuple(float(b) for b in optim.get("betas") or (0.9, 0.999)),
            **fused,
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


def _on_cuda(p) -> bool:
    return (p["params"][0] if isinstance(p, dict) else p).is_cuda


def run_optimizer(tcfg, batch_size: int | None = None) -> dict:
    """The run's `trainer.optimizer` as a plain dict. With `trainer.lr_batch_size` set, `lr` is
    stated for that batch size and scaled linearly to `batch_size` (default: `trainer.batch_size`;
    Goyal et al., 2017, "Accurate, Large Minibatch SGD", Sec. 2.1); a warm-up then starts from the
    unscaled lr unless `warmup_from` is given (their gradual warm-up)."""
    o = tcfg.optimizer
    optim = OmegaConf.to_container(o, resolve=True) if isinstance(o, DictConfig) else dict(o)
    base = tcfg.get("lr_batch_size")
    if base:
        lr = float(optim["lr"])
        optim["lr"] = lr * int(batch_size or tcfg.batch_size) / int(base)
        if optim.get("warmup_from") is None:
            optim["warmup_from"] = lr
    return optim


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
