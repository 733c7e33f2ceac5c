"""Supervised training of a classifier with a pluggable loss."""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from backdoor_bench.training.losses import get_loss
from backdoor_bench.training.optim import configure_optimizers


class Supervised(pl.LightningModule):
    """Minimise `loss(model(x), y)` over batches `{"x", "y", ...}` from a `DeviceLoader`.

    `loss_args` binds the loss's hyperparameters (e.g. SCE's alpha, beta). `head_only` trains the
    linear head on features computed without gradients, with the model in train mode, so the
    backbone's BatchNorm statistics still follow the data (DBD's warm-up as its official code runs
    it: the backbone is frozen only by the no-grad feature pass, so its BatchNorm keeps updating).
    """

    compilable = True  # `trainer.compile` may compile its backbone (training.fit.compiled)

    def __init__(
        self,
        model: torch.nn.Module,
        optim: dict,
        max_epochs: int,
        loss: str = "ce",
        channels_last: bool = False,
        log_prefix: str = "train",
        loss_args: dict | None = None,
        head_only: bool = False,
    ):
        super().__init__()
        self.model, self.optim, self.max_epochs = model, optim, max_epochs
        self.loss_fn, self.channels_last, self.log_prefix = (
            get_loss(loss, **(loss_args or {})),
            channels_last,
            log_prefix,
        )
        self.head_only = head_only
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def forward(self, x):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.head_only:
            with torch.no_grad():
                f = self.model.features(x)
            return self.model.head(f)
        return self.model(x)

    def training_step(self, batch, batch_idx):
        logits = self(batch["x"])
        loss = self.loss_fn(logits, batch["y"])
        acc = (logits.argmax(1) == batch["y"]).float().mean()
        self.log_dict(
            {f"{self.log_prefix}/loss": loss, f"{self.log_prefix}/acc": acc},
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=len(batch["y"]),
        )
        return loss

    def configure_optimizers(self):
        params = self.model.head.parameters() if self.head_only else self.model.parameters()
        return configure_optimizers(params, self.optim, self.max_epochs)
