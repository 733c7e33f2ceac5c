"""A fine-tuning recipe from a defense's config: epochs, batch size and optimizer, checked once.

The post-training repairs (FT, Fine-Pruning, NAD, Neural Cleanse's unlearning) each fine-tune the
backdoored model on the trusted clean subset with their own recipe; `recipe(...)` turns the
config values into a `Recipe` or fails with a one-line ConfigError naming the key
(`defense.<prefix>epochs`, ...), before any data is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from backdoor_bench.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class Recipe:
    """`epochs` (before the trainer's stage cap), `batch_size`, `optimizer` (a `trainer.optimizer`
    style dict: name, lr, momentum, weight_decay, nesterov, schedule, milestones, gamma)."""

    epochs: int
    batch_size: int
    optimizer: dict


def as_dict(node) -> dict:
    """A config block (DictConfig or dict) as a plain dict."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})


def recipe(epochs, batch_size, optimizer, prefix: str = "") -> Recipe:
    """The checked `Recipe`; `prefix` is the config keys' prefix (e.g. `teacher_`)."""
    if int(epochs) < 1:
        raise ConfigError(f"defense.{prefix}epochs={epochs} must be an integer >= 1")
    if int(batch_size) < 1:
        raise ConfigError(f"defense.{prefix}batch_size={batch_size} must be an integer >= 1")
    optim = as_dict(optimizer)
    key = f"defense.{prefix}optimizer"
    if optim.get("name", "sgd") not in OPTIMIZERS:
        raise ConfigError(f"{key}.name={optim.get('name')!r} is unknown: use one of {', '.join(OPTIMIZERS)}")
    if "lr" not in optim or not float(optim["lr"]) > 0:
        raise ConfigError(f"{key}.lr={optim.get('lr')} must be a learning rate > 0")
    if optim.get("schedule", "cosine") not in SCHEDULES:
        raise ConfigError(f"{key}.schedule={optim.get('schedule')!r} is unknown: use one of {', '.join(SCHEDULES)}")
    return Recipe(int(epochs), int(batch_size), optim)
