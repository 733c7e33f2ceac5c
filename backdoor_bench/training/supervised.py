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

    `batch_attack(x, y, generator) -> TrainBatch` (a training-controlled attack's `train_batch`;
    only for the backdoored model) rewrites each batch after the augmentation, before the forward
    pass, and may say how the per-sample losses combine; its generator lives on the batch's device,
    seeded with `batch_seed`.
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
        batch_attack=None,
        batch_seed: int = 0,
    ):
        super().__init__()
        self.model, self.optim, self.max_epochs = model, optim, max_epochs
        self.loss_fn, self.channels_last, self.log_prefix = (
            get_loss(loss, **(loss_args or {})),
            channels_last,
            log_prefix,
        )
        self.head_only = head_only
        self.batch_attack, self.batch_seed, self._batch_generator = batch_attack, int(batch_seed), None
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

    def attacked(self, x: torch.Tensor, y: torch.Tensor):
        """The batch as the training-controlled attack rewrites it: (x, y, combine or None)."""
        if self.batch_attack is None:
            return x, y, None
        if self._batch_generator is None or self._batch_generator.device != x.device:
            self._batch_generator = torch.Generator(device=x.device).manual_seed(self.batch_seed)
        b = self.batch_attack(x, y, self._batch_generator)
        return b.x, b.y, b.combine

    def training_step(self, batch, batch_idx):
        x, y, combine = self.attacked(batch["x"], batch["y"])
        logits = self(x)
        loss = self.loss_fn(logits, y) if combine is None else combine(self.loss_fn(logits, y, reduction="none"))
        acc = (logits.argmax(1) == y).float().mean()
        self.log_dict(
            {f"{self.log_prefix}/loss": loss, f"{self.log_prefix}/acc": acc},
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            batch_size=len(y),
        )
        return loss

    def configure_optimizers(self):
        params = self.model.head.parameters() if self.head_only else self.model.parameters()
        return configure_optimizers(params, self.optim, self.max_epochs)
