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


def sce(
    logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean", alpha: float = 0.1, beta: float = 1.0
) -> torch.Tensor:
    """Symmetric cross-entropy, alpha * CE + beta * RCE (Wang et al., ICCV 2019; DBD, Huang et al.,
    ICLR 2022, App. I Eq. 6; DBD's code, model/loss.py, clamps the softmax to [1e-7, 1] inside RCE).
    DBD: alpha 0.1, beta 1."""
    p = F.softmax(logits.float(), 1).clamp(1e-7, 1.0)
    loss = alpha * F.cross_entropy(logits.float(), y, reduction="none") + beta * _rce(p, y)
    return _reduce(loss, reduction)


def gce(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean", q: float = 0.7) -> torch.Tensor:
    """Generalized cross-entropy (1 - p_y^q) / q (Zhang & Sabuncu 2018; their default q = 0.7);
    DBD (Huang et al., ICLR 2022) Table 26."""
    p_y = F.softmax(logits.float(), 1).gather(1, y[:, None]).squeeze(1).clamp_min(1e-7)
    return _reduce((1 - p_y**q) / q, reduction)


def apl(
    logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean", alpha: float = 1.0, beta: float = 1.0
) -> torch.Tensor:
    """Active-passive loss NCE + RCE (Ma et al. 2020; alpha = beta = 1 is their CIFAR-10 setting):
    NCE = -log p_y / sum_k -log p_k; DBD (Huang et al., ICLR 2022) Table 26."""
    logp = F.log_softmax(logits.float(), 1)
    nce = logp.gather(1, y[:, None]).squeeze(1) / logp.sum(1)
    p = logp.exp().clamp(1e-7, 1.0)
    return _reduce(alpha * nce + beta * _rce(p, y), reduction)


def nt_xent(u: torch.Tensor, v: torch.Tensor, temperature: float = 0.5, symmetric: bool = False) -> torch.Tensor:
    """SimCLR's NT-Xent (Chen et al., ICML 2020, Eq. 1; DBD, Huang et al., ICLR 2022, App. I Eq. 5) for
    two views `u`, `v` [B, D] of the same B images.

    Each anchor's positive is its other view; the negatives are the other 2B - 2 embeddings.
    `symmetric=False` is DBD's official code: only the first views are anchors (half the usual
    loss's terms); `symmetric=True` averages over all 2B anchors as in SimCLR's paper.
    """
    z = F.normalize(torch.cat([u, v]).float(), dim=1)
    b = len(u)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.arange(2 * b, device=z.device).add_(b).remainder_(2 * b)  # i <-> i + B, built on the device
    losses = F.cross_entropy(sim, positive, reduction="none")
    return losses.mean() if symmetric else losses[:b].mean()


def lga(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean", gamma: float = 0.5) -> torch.Tensor:
    """ABL's local gradient ascent, sign(CE - gamma) * CE (Li et al. 2021, Eq. 3; gamma 0.5): a loss
    under gamma is pushed back up, so only the easily learned (poisoned) samples stay low. As ABL's
    code, `mean` applies the sign to the batch's mean CE; `none` and `sum` per sample. D-BR's
    paper (Chen, Wu, Wang, NeurIPS 2022) Fig. 4 ranks samples with a model trained on it."""
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    if reduction == "mean":
        m = ce.mean()
        return torch.sign(m - gamma) * m
    return _reduce(torch.sign(ce - gamma) * ce, reduction)


def centroid_separation(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The SD module's fine-tune loss (Chen, Wu, Wang, NeurIPS 2022, App. A.1; "L_intra" in their
    official README), as their official code computes it: the mean of all K'^2 entries of the cosine-similarity matrix of the
    batch's K' class centroids (by given label), its diagonal zeroed. Minimising it pushes the
    class centroids apart.

    Computed without a host sync: each sample carries its class's normalised centroid (from the
    [B, B] same-label matrix) and weight 1 / (its class's count), so the weighted sums over
    samples are the sums over the K' classes (K' = the weights' sum)."""
    same = (y[:, None] == y[None]).float()
    count = same.sum(1)
    mu = F.normalize((same @ f.float()) / count[:, None], dim=1)  # row i: the centroid of i's class
    w = 1.0 / count
    s = mu @ mu.T
    k = w.sum()
    return (w @ s @ w - (w * s.diagonal()).sum()) / (k * k)


def contrastive_positives(y: torch.Tensor, supervised: torch.Tensor, clean_pos_only: bool = False) -> torch.Tensor:
    """bool [2B, 2B] positive mask for 2B rows (view 1 of samples 0..B-1, then view 2).

    An anchor whose sample is `supervised` takes every other row with the same given label
    (SupCon); any other anchor takes only its sample's other view (SimCLR). D-ST's official code
    (Chen, Wu, Wang, NeurIPS 2022; ST/losses.py, `SupConLoss_Consistency`) lets a supervised
    anchor's positives include unsupervised rows of its label, which masks rows only;
    `clean_pos_only` keeps only supervised rows (and the anchor's own other view)."""
    b = len(y)
    yy, sup = torch.cat([y, y]), torch.cat([supervised, supervised]).bool()
    same_sample = torch.arange(2 * b, device=y.device) % b
    same_sample = same_sample[:, None] == same_sample[None]
    pos = (yy[:, None] == yy[None]) & sup[:, None]
    if clean_pos_only:
        pos &= sup[None] | same_sample
    pos |= same_sample
    return pos & ~torch.eye(2 * b, dtype=torch.bool, device=y.device)


def sup_con(
    z: torch.Tensor, positives: torch.Tensor, temperature: float = 0.1, base_temperature: float = 0.07
) -> torch.Tensor:
    """SupCon over 2B L2-normalised rows `z` with a positive mask (Khosla et al. 2020, Eq. 2 as
    SupContrast codes it): for anchor i, -(tau / tau_base) * mean over its positives p of
    log[exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau)], averaged over all anchors. With
    `contrastive_positives` it is D-ST's SS-CTL (Chen, Wu, Wang, NeurIPS 2022, Sec. 3.3, Eq. 2),
    CTL or S-CTL."""
    z = F.normalize(z.float(), dim=1)
    n = len(z)
    logits = (z @ z.T / temperature).masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = positives.float()
    mean_pos = (log_prob.masked_fill(~positives, 0.0) * pos).sum(1) / pos.sum(1).clamp_min(1)
    return -(temperature / base_temperature) * mean_pos.mean()


def mixed_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, poisoned: torch.Tensor, lambda_p: float = 0.001
) -> torch.Tensor:
    """D-ST's mixed cross-entropy (Chen, Wu, Wang, NeurIPS 2022, Sec. 3.3, Eq. 3): CE averaged over
    the batch's clean-split samples minus lambda_p x CE averaged over its poisoned-split samples. A
    part without samples contributes 0 (our choice: the official code's empty mean is NaN)."""
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    p = poisoned.bool()
    zero = ce.new_zeros(())

    def part_mean(mask: torch.Tensor) -> torch.Tensor:  # 0 for an empty part, no host sync
        return torch.where(mask, ce, zero).sum() / mask.sum().clamp_min(1)

    return part_mean(~p) - lambda_p * part_mean(p)


LOSSES = {"ce": cross_entropy, "sce": sce, "gce": gce, "apl": apl, "lga": lga}


def get_loss(name: str, **params):
    """The classification loss `name` with its hyperparameters bound."""
    from backdoor_bench.errors import ConfigError

    if name not in LOSSES:
        raise ConfigError(f"loss {name!r} is unknown: use one of {', '.join(LOSSES)}")
    return functools.partial(LOSSES[name], **params) if params else LOSSES[name]
