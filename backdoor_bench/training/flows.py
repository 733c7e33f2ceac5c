"""Per-class normalizing flows on feature vectors (the flows paper, "Mitigating Backdoor Attacks
with Generative Modelling and Dataset Relabeling", Sabolic, Grubisic, Segvic, Sec. 4.3): one
RealNVP per class from
zuko, two affine coupling modules whose conditioners are Linear -> ReLU -> Linear, fitted by
maximum likelihood (Eq. 2) with Adam."""

from __future__ import annotations

import logging

import torch
import zuko

log = logging.getLogger(__name__)


def make_flow(dim: int, hidden: int = 512, transforms: int = 2) -> zuko.flows.Flow:
    """RealNVP with `transforms` affine couplings (alternating masks) and a standard-normal base."""
    return zuko.flows.RealNVP(dim, transforms=transforms, hidden_features=[hidden])


def fit_flow(
    flow: zuko.flows.Flow,
    z: torch.Tensor,
    epochs: int = 50,
    batch_size: int = 16,
    lr: float = 1e-3,
    betas=(0.9, 0.99),
    seed: int = 0,
    device="cpu",
) -> list[float]:
    """Minimise the mean negative log-likelihood of `z` under `flow` on `device` (the flows paper, Eq. 2,
    Sec. 5.1: Adam lr 1e-3, betas (0.9, 0.99), batch 16, 50 epochs). Returns the mean NLL per
    epoch (read back from the device once per epoch, not per step); the flow is left on `device`."""
    g = torch.Generator().manual_seed(seed)
    flow, z = flow.to(device), z.to(device)
    opt = torch.optim.Adam(flow.parameters(), lr=lr, betas=tuple(betas))
    history = []
    flow.train()
    for _ in range(epochs):
        order = torch.randperm(len(z), generator=g).to(device)
        total = torch.zeros((), dtype=torch.float64, device=device)  # summed in float64, as Python floats
        for i in range(0, len(z), batch_size):
            nll = -flow().log_prob(z[order[i : i + batch_size]]).mean()
            opt.zero_grad()
            nll.backward()
            opt.step()
            total += nll.detach().double() * len(order[i : i + batch_size])
        history.append(float(total) / max(1, len(z)))
    return history


@torch.no_grad()
def log_density_matrix(flows: list[zuko.flows.Flow], z: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """L[i, c] = log p_c(z_i) for every sample and every class's flow (on the CPU)."""
    cols = []
    for flow in flows:
        flow.eval()
        device = next(flow.parameters()).device
        cols.append(
            torch.cat([flow().log_prob(z[i : i + batch_size].to(device)).cpu() for i in range(0, len(z), batch_size)])
        )
    return torch.stack(cols, 1)
