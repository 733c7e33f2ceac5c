"""MixMatch (Berthelot et al. 2019) as DBD's third stage uses it (Huang et al., ICLR 2022,
Sec. 4.5, App. I Eqs. 7-9; the official code's utils/trainer/semi.py): sharpened label guessing
over K augmentations, MixUp of labeled and
unlabeled batches, L = L_x + lambda_u(t) * L_u with a linear ramp-up of lambda_u.

The labeled/unlabeled split may change every epoch: `SemiLoader` asks its `split()` callable
at the start of each epoch (DBD re-ranks the whole training set by loss there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from backdoor_bench.training.optim import configure_optimizers

log = logging.getLogger(__name__)


def sharpen(p: torch.Tensor, T: float) -> torch.Tensor:
    """Temperature sharpening p_k^(1/T) / sum_j p_j^(1/T) (MixMatch Eq. 7)."""
    p = p ** (1.0 / T)
    return p / p.sum(1, keepdim=True)


def mixup(
    x: torch.Tensor, t: torch.Tensor, lam: float | torch.Tensor, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixMatch's MixUp with lambda' = max(lambda, 1 - lambda), so each mixed sample stays closer
    to its own input than to its partner `perm`. `lam` may be a tensor on the device (no host
    sync); lambda' and 1 - lambda' are formed in float64, as from a Python float."""
    lam = torch.as_tensor(lam, dtype=torch.float64, device=x.device)
    lam = torch.maximum(lam, 1.0 - lam)

    def mixed(v: torch.Tensor) -> torch.Tensor:
        return lam.to(v.dtype) * v + (1.0 - lam).to(v.dtype) * v[perm]

    return mixed(x), mixed(t)


def beta_sample(alpha: float, device) -> torch.Tensor:
    """One draw of Beta(alpha, alpha), a 0-d tensor drawn on `device` by its default generator
    (`torch.distributions.Beta`; on the CPU the same draw as from Python floats)."""
    a = torch.tensor(float(alpha), device=device)
    return torch.distributions.Beta(a, a).sample()


def mixmatch_loss(
    logits_x: torch.Tensor, targets_x: torch.Tensor, logits_u: torch.Tensor, targets_u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_x: soft-target cross-entropy on the mixed labeled part; L_u: squared error between
    softmax and guessed targets, averaged over samples and classes (DBD, Huang et al., ICLR 2022,
    App. I Eqs. 7-8)."""
    lx = -(targets_x * F.log_softmax(logits_x.float(), 1)).sum(1).mean()
    lu = ((F.softmax(logits_u.float(), 1) - targets_u) ** 2).mean()
    return lx, lu


def linear_rampup(t: float, length: float) -> float:
    """clip(t / length, 0, 1); `t` counts epochs, fractions included (DBD's official code ramps
    lambda_u over the global epoch plus the iteration's fraction)."""
    return 1.0 if length <= 0 else float(min(max(t / length, 0.0), 1.0))


class SemiLoader:
    """`iterations` batches per epoch of `batch_size` labeled and `batch_size` unlabeled images,
    each drawn from a reshuffled pass over its part (as MixMatch's iterators), augmented on the
    device: one view of each labeled image, `k` views of each unlabeled one.

    `split()` -> bool [N] (True: labeled) is called at every epoch's start.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        split: Callable[[], torch.Tensor],
        batch_size: int,
        iterations: int,
        k: int,
        augment,
        device="cpu",
        seed: int = 0,
    ):
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.split, self.batch_size, self.iterations, self.k, self.augment = split, batch_size, iterations, k, augment
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        return self.iterations

    def _stream(self, idx: torch.Tensor):
        """Endless batches: reshuffled full passes over `idx`, the last partial batch dropped."""
        while True:
            order = idx[torch.randperm(len(idx), device=self.device, generator=self.generator)]
            for j in range(max(1, len(order) // self.batch_size)):
                yield order[j * self.batch_size : (j + 1) * self.batch_size]

    def _view(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.x[idx]
        return (self.augment(x, self.generator) if self.augment is not None else x).float().div_(255)

    def __iter__(self):
        labeled = self.split().to(self.device)
        lab, unl = labeled.nonzero().flatten(), (~labeled).nonzero().flatten()
        if len(lab) == 0 or len(unl) == 0:
            raise ValueError(f"MixMatch needs labeled and unlabeled samples: got {len(lab)} and {len(unl)}")
        streams = self._stream(lab), self._stream(unl)
        for _ in range(self.iterations):
            li, ui = next(streams[0]), next(streams[1])
            yield {
                "x": self._view(li),
                "y": self.y[li],
                "index": li,
                "u": torch.stack([self._view(ui) for _ in range(self.k)]),
            }


class MixMatch(pl.LightningModule):
    """One MixMatch step per batch of a `SemiLoader`.

    Labels are guessed with the model in train mode under no-grad (DBD's code). All mixed inputs
    go through the model in one pass, so every BatchNorm layer sees the labeled and unlabeled
    parts together: what the reference code's interleaving achieves for its separate passes.
    `epoch_offset` is added to the epoch index for the ramp-up (DBD ramps over the global epoch,
    warm-up included).
    """

    compilable = True  # `trainer.compile` may compile its backbone (training.fit.compiled)

    def __init__(
        self,
        model: torch.nn.Module,
        optim: dict,
        max_epochs: int,
        num_classes: int,
        T: float = 0.5,
        alpha: float = 0.75,
        lambda_u: float = 15.0,
        rampup_epochs: float = 190,
        epoch_offset: int = 0,
        channels_last: bool = False,
    ):
        super().__init__()
        self.model, self.optim, self.max_epochs, self.num_classes = model, optim, max_epochs, num_classes
        self.T, self.alpha, self.lambda_u, self.rampup_epochs = T, alpha, lambda_u, rampup_epochs
        self.epoch_offset, self.channels_last = epoch_offset, channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y, u = batch["x"], batch["y"], batch["u"]  # u: [K, B, C, H, W]
        k, b = u.shape[:2]
        with torch.no_grad():
            p = F.softmax(self(u.flatten(0, 1)).float(), 1).view(k, b, -1).mean(0)
            q = sharpen(p, self.T)
        inputs = torch.cat([x, u.flatten(0, 1)])
        targets = torch.cat([F.one_hot(y, self.num_classes).float(), q.repeat(k, 1)])
        mixed_x, mixed_t = self.mix(inputs, targets)
        logits = self(mixed_x)
        lx, lu = mixmatch_loss(logits[: len(x)], mixed_t[: len(x)], logits[len(x) :], mixed_t[len(x) :])
        t = self.epoch_offset + self.current_epoch + batch_idx / max(1, self.trainer.num_training_batches)
        w = self.lambda_u * linear_rampup(t, self.rampup_epochs)
        loss = lx + w * lu
        self.log_dict(
            {"mixmatch/loss": loss, "mixmatch/lx": lx, "mixmatch/lu": lu, "mixmatch/lambda_u": w},
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=len(x),
        )
        return loss

    def mix(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp of the batch with a random permutation of itself, lambda ~ Beta(alpha, alpha),
        drawn on the batch's device (no host sync)."""
        lam = beta_sample(self.alpha, inputs.device)
        perm = torch.randperm(len(inputs), device=inputs.device)
        return mixup(inputs, targets, lam, perm)

    def configure_optimizers(self):
        return configure_optimizers(self.model.parameters(), self.optim, self.max_epochs)
