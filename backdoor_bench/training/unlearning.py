"""Gradient-ascent unlearning, shared by the defenses that unlearn a suspected-poisoned set.

D-BR (Chen, Wu and Wang, NeurIPS 2022, Sec. 3.4, Eq. 4-5) alternates one epoch of unlearning on
the poisoned split (gradient ascent on CE) with one of relearning on the clean split; ABL (Li et
al., NeurIPS 2021) unlearns its isolated samples the same way. `Phases` chains the loaders of one
epoch, each batch tagged with its sign; `SignedCE` minimises sign x CE.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from backdoor_bench.data.loader import DeviceLoader
from backdoor_bench.training.losses import cross_entropy
from backdoor_bench.training.optim import configure_optimizers


class Phases:
    """One epoch = a pass over each `(loader, sign)` in turn; every batch carries its `sign`
    (-1: gradient ascent, +1: descent)."""

    def __init__(self, parts: list[tuple[DeviceLoader, float]]):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(loader) for loader, _ in self.parts)

    def __iter__(self):
        for loader, sign in self.parts:
            for batch in loader:
                yield {**batch, "sign": sign}


class SignedCE(pl.LightningModule):
    """Minimise sign x CE: the unlearning batches' CE goes up (D-BR's Eq. 4), the relearning
    batches' down (Eq. 5). Logs `<prefix>/unlearn_ce` and `<prefix>/relearn_ce` per epoch."""

    def __init__(
        self,
        model: torch.nn.Module,
        optim: dict,
        schedule_epochs: int,
        channels_last: bool = False,
        log_prefix: str = "unlearn",
    ):
        super().__init__()
        self.model, self.optim, self.schedule_epochs, self.channels_last = model, optim, schedule_epochs, channels_last
        self.log_prefix = log_prefix
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def training_step(self, batch, batch_idx):
        x = batch["x"].contiguous(memory_format=torch.channels_last) if self.channels_last else batch["x"]
        ce = cross_entropy(self.model(x), batch["y"])
        step = "unlearn" if batch["sign"] < 0 else "relearn"
        self.log(f"{self.log_prefix}/{step}_ce", ce, on_step=False, on_epoch=True, batch_size=len(batch["y"]))
        return batch["sign"] * ce

    def configure_optimizers(self):
        return configure_optimizers(self.model.parameters(), self.optim, self.schedule_epochs)
