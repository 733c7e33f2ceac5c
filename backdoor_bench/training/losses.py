"""Losses, each a small tested function.

Classification losses share the signature `(logits, y, reduction="mean", **params)`;
`reduction="none"` gives the per-sample loss that loss-ranking defenses read (DBD's split).
`get_loss(name, **params)` binds a loss's hyperparameters from a config.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    return loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.mean()


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Standard cross-entropy, -log softmax(logits)[y]."""
    return F.cross_entropy(logits.float(), y, reduction=reduction)


def _rce(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reverse cross-entropy with log 0 clamped to log 1e-4: -log(1e-4) * (1 - p_y) (Wang et al. 2019)."""
    return -math.log(1e-4) * (1 - p.gather(1, y[:, None]).squeeze(1))


def sce(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean", alpha: float = 0.1,
        beta: float = 1.0) -> torch.Tensor:
    """Symmetric cross-entropy, alpha * CE + beta * RCE (seed 003 Eq. 6; DBD's code clamps the
    softmax to [1e-7, 1] inside RCE). DBD: alpha 0.1, beta 1."""
    p = F.softmax(logits.float(), 1).clamp(1e-7, 1.0)
    loss = alpha * F.cross_entropy(logits.float(), y, reduction="none") + beta * _rce(p, y)
    return _reduce(loss, reduction)


def gce(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean", q: float = 0.7) -> torch.Tensor:
    """Generalized cross-entropy (1 - p_y^q) / q (Zhang & Sabuncu 2018; their default q = 0.7);
    seed 003 Table 26."""
    p_y = F.softmax(logits.float(), 1).gather(1, y[:, None]).squeeze(1).clamp_min(1e-7)
    return _reduce((1 - p_y ** q) / q, reduction)


def apl(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean", alpha: float = 1.0,
        beta: float = 1.0) -> torch.Tensor:
    """Active-passive loss NCE + RCE (Ma et al. 2020; alpha = beta = 1 is their CIFAR-10 setting):
    NCE = -log p_y / sum_k -log p_k; seed 003 Table 26."""
    logp = F.log_softmax(logits.float(), 1)
    nce = logp.gather(1, y[:, None]).squeeze(1) / logp.sum(1)
    p = logp.exp().clamp(1e-7, 1.0)
    return _reduce(alpha * nce + beta * _rce(p, y), reduction)


def nt_xent(u: torch.Tensor, v: torch.Tensor, temperature: float = 0.5, symmetric: bool = False) -> torch.Tensor:
    """SimCLR's NT-Xent (seed 003 Eq. 5) for two views `u`, `v` [B, D] of the same B images.

    Each anchor's positive is its other view; the negatives are the other 2B - 2 embeddings.
    `symmetric=False` is DBD's code: only the first views are anchors (half the usual loss's
    terms, specs A.3); `symmetric=True` averages over all 2B anchors as in SimCLR's paper.
    """
    z = F.normalize(torch.cat([u, v]).float(), dim=1)
    b = len(u)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    losses = F.cross_entropy(sim, positive, reduction="none")
    return losses.mean() if symmetric else losses[:b].mean()


LOSSES = {"ce": cross_entropy, "sce": sce, "gce": gce, "apl": apl}


def get_loss(name: str, **params):
    """The classification loss `name` with its hyperparameters bound."""
    from backdoor_bench.errors import ConfigError

    if name not in LOSSES:
        raise ConfigError(f"loss {name!r} is unknown: use one of {', '.join(LOSSES)}")
    return functools.partial(LOSSES[name], **params) if params else LOSSES[name]
