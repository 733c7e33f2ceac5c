"""Optimizer and schedule from the trainer config (`trainer.optimizer`)."""

from __future__ import annotations

import torch

from backdoor_bench.errors import ConfigError


def configure_optimizers(params, optim: dict, max_epochs: int):
    """SGD or Adam with a per-epoch cosine (T_max = the run's epochs, not a hard-coded 100),
    step or constant schedule."""
    name, lr, wd = optim.get("name", "sgd"), float(optim["lr"]), float(optim.get("weight_decay", 0.0))
    if name == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=float(optim.get("momentum", 0.9)), weight_decay=wd,
                              nesterov=bool(optim.get("nesterov", False)))
    elif name == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=wd)
    else:
        raise ConfigError(f"trainer.optimizer.name={name!r} is unknown: use sgd or adam")
    schedule = optim.get("schedule", "cosine")
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, max_epochs))
    elif schedule == "step":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(optim.get("milestones", [])),
                                                     float(optim.get("gamma", 0.1)))
    elif schedule == "constant":
        return opt
    else:
        raise ConfigError(f"trainer.optimizer.schedule={schedule!r} is unknown: use cosine, step or constant")
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
