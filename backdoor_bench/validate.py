"""Config validation before any data is loaded or any model trained (DESIGN.md section 3).

Every failure is a `ConfigError` whose message names the key to change; `run.py` prints it
without a traceback.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from backdoor_bench.attacks.base import Attack
from backdoor_bench.defenses.base import Defense
from backdoor_bench.errors import ConfigError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _build(group: str, node, **kw):
    if node is None or "_target_" not in node:
        raise ConfigError(f"{group} has no _target_: choose one of the configs in conf/{group}/")
    try:
        return instantiate(node, **kw)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"{group}: {cause or e}") from None


def validate(cfg) -> tuple[Attack, Defense]:
    """Check the whole config; return the instantiated attack and defense."""
    d, t = cfg.dataset, cfg.trainer
    for key in ("num_classes", "channels", "image_size"):
        if key not in d:
            raise ConfigError(f"dataset.{key} is missing: every dataset config declares it")
    source = d.source
    root = source.get("root")
    if "root" in source and not source.get("download", False):
        if not root or not Path(str(root)).expanduser().exists():
            raise ConfigError(f"dataset.root={root} does not exist: set dataset.root to the folder holding "
                              f"the {d.name} data" + (" (or dataset.download=true when online)"
                                                      if "download" in source else ""))
    if t.accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={t.accelerator!r} is unknown: use one of {', '.join(ACCELERATORS)}")
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=gpu but no CUDA GPU is visible: use trainer=cpu or trainer=default")
    for key in ("max_epochs", "batch_size", "eval_batch_size"):
        if int(t[key]) < 1:
            raise ConfigError(f"trainer.{key}={t[key]} must be at least 1")
    for key in ("train_subset", "test_subset"):
        if t.get(key) is not None and int(t[key]) < 1:
            raise ConfigError(f"trainer.{key}={t[key]} must be a positive count or null")

    attack = _build("attack", cfg.attack, num_classes=int(d.num_classes))
    attack.check(int(d.num_classes), (int(d.channels), int(d.image_size), int(d.image_size)))
    defense = _build("defense", cfg.defense)
    if defense.needs_clean and not defense.clean_fraction > 0:
        raise ConfigError(f"defense={defense.name} needs trusted clean data: set defense.clean_fraction > 0 "
                          "(for example 0.05)")
    if not 0 <= defense.clean_fraction < 1:
        raise ConfigError(f"defense.clean_fraction={defense.clean_fraction} must be a fraction in [0, 1)")
    return attack, defense
