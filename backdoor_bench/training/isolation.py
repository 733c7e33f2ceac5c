"""Loss-guided isolation, shared by the defenses that find poison by how fast it is learned.

ABL (Li, Lyu, Koren, Lyu, Li and Ma, "Anti-Backdoor Learning", NeurIPS 2021, Sec. 4.1): train with
local gradient ascent (LGA, `losses.lga`: the CE held near `gamma`, so clean samples stay near the
threshold while the easily learned poisoned samples fall below it), then rank every sample by its
loss: the lowest losses are the suspects. D-ST/D-BR's Fig. 4 uses the same ranking as one of its
SD metrics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from backdoor_bench.data.imageset import ImageSet
from backdoor_bench.training.fit import per_sample_loss
from backdoor_bench.training.losses import get_loss
from backdoor_bench.training.supervised import Supervised


def lga_isolation_scores(
    fit: Callable,
    model: torch.nn.Module,
    data: ImageSet,
    *,
    optimizer: dict,
    epochs: int,
    gamma: float,
    channels_last: bool = False,
    device="cpu",
    name: str = "lga",
) -> torch.Tensor:
    """Train `model` on `data` with LGA for `epochs` (`fit(name, module, data, epochs)`, e.g. a
    defense context's), then score every sample: -CE, so higher = more suspicious."""
    module = Supervised(
        model,
        optimizer,
        epochs,
        loss="lga",
        loss_args={"gamma": float(gamma)},
        channels_last=channels_last,
        log_prefix=name,
    )
    fit(name, module, data, epochs)
    return -per_sample_loss(model, data.x, data.y, get_loss("ce"), device=device)


def lowest_share(losses: torch.Tensor, share: float) -> torch.Tensor:
    """bool mask of the `share` of samples with the smallest loss (ties by index)."""
    n = int(round(share * len(losses)))
    keep = torch.zeros(len(losses), dtype=torch.bool)
    keep[torch.sort(losses, stable=True).indices[:n]] = True
    return keep
