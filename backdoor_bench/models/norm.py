"""The normalisation layer of the convolutional models: `norm: batch` (BatchNorm, every model's
default) or `norm: group` (GroupNorm, Wu and He, "Group Normalization", ECCV 2018).

GroupNorm normalises each sample on its own, so a per-sample gradient is defined and DP-SGD's
per-sample clipping (Opacus) can train the model; BatchNorm mixes the samples of a batch and
cannot. A layer of C channels gets min(`norm_groups`, C) groups: Wu and He's default G = 32,
which is also how Opacus' `ModuleValidator.fix` replaces a BatchNorm (GroupNorm(min(32, C), C)).
"""

from __future__ import annotations

from torch import nn

from backdoor_bench.errors import ConfigError

NORMS = ("batch", "group")


def check_norm(norm: str, norm_groups: int) -> None:
    """A ConfigError naming the key for an unknown `norm` or a group count below 1."""
    if norm not in NORMS:
        raise ConfigError(f"model.norm={norm!r} is unknown: use one of {', '.join(NORMS)}")
    if int(norm_groups) < 1:
        raise ConfigError(f"model.norm_groups={norm_groups} must be at least 1")


def norm2d(norm: str, channels: int, norm_groups: int = 32) -> nn.Module:
    """BatchNorm2d(channels), or GroupNorm(min(norm_groups, channels), channels)."""
    check_norm(norm, norm_groups)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    groups = min(int(norm_groups), channels)
    if channels % groups:
        raise ConfigError(
            f"model.norm_groups={norm_groups} does not divide a layer's {channels} channels: "
            "use a power of two (or a divisor of every layer's width)"
        )
    return nn.GroupNorm(groups, channels)
