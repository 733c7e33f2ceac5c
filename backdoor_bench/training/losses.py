"""Losses, each a small tested function `(logits, y, reduction) -> loss`.

`reduction="none"` gives the per-sample loss that loss-ranking defenses read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Standard cross-entropy, -log softmax(logits)[y]."""
    return F.cross_entropy(logits.float(), y, reduction=reduction)


LOSSES = {"ce": cross_entropy}


def get_loss(name: str):
    from backdoor_bench.errors import ConfigError

    if name not in LOSSES:
        raise ConfigError(f"loss {name!r} is unknown: use one of {', '.join(LOSSES)}")
    return LOSSES[name]
