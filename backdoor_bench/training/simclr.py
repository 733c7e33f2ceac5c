"""SimCLR (Chen et al. 2020) as DBD trains it (Huang, Li, Wu, Qin, Ren, ICLR 2022, Sec. 4.3 and
App. A/I; the official code's simclr.py and config/defense/simclr/).

The backbone is any model's `features`; a projector MLP maps features to the contrastive space,
and NT-Xent pulls two augmented views of the same image together. The projector is thrown away
afterwards: defenses use the backbone (`ctx.ssl_backbone()`).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn

from backdoor_bench.data.augment import SimCLRViews
from backdoor_bench.training.losses import nt_xent
from backdoor_bench.training.optim import configure_optimizers


def projector(dim: int, out_dim: int = 128, batch_norm: bool = True) -> nn.Module:
    """Linear(d, d) -> BatchNorm -> ReLU -> Linear(d, out) (DBD's projector in its official code);
    without `batch_norm`, SupContrast's (D-ST's encoder, Chen, Wu, Wang, NeurIPS 2022: the official
    code's ST/networks/resnet_big.py)."""
    norm = [nn.BatchNorm1d(dim)] if batch_norm else []
    return nn.Sequential(nn.Linear(dim, dim), *norm, nn.ReLU(inplace=True), nn.Linear(dim, out_dim))


class SimCLR(pl.LightningModule):
    """Contrastive training of `model.features` on unlabeled images.

    `optim` follows `trainer.optimizer`'s keys; `schedule_epochs` is the cosine schedule's length,
    which may exceed the epochs trained (DBD's released backbones stop at epoch 100 of a
    1000-epoch schedule: its fine-tuning configs load epoch100.pt). `loss_fn(z, batch)`, when
    given, replaces NT-Xent: it gets the 2B projected rows (all first views, then all second views)
    and the batch (labels and extras), e.g. D-ST's SS-CTL.
    """

    compilable = True  # `trainer.compile` may compile its backbone (training.fit.compiled)

    def __init__(
        self,
        model: nn.Module,
        views: SimCLRViews,
        optim: dict,
        schedule_epochs: int,
        temperature: float = 0.5,
        symmetric: bool = False,
        projector_dim: int = 128,
        channels_last: bool = False,
        loss_fn=None,
        projector_bn: bool = True,
    ):
        super().__init__()
        self.model, self.views, self.optim, self.schedule_epochs = model, views, optim, schedule_epochs
        self.temperature, self.symmetric, self.channels_last = temperature, symmetric, channels_last
        self.loss_fn = loss_fn
        self.projector = projector(model.head.in_features, projector_dim, projector_bn)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.projector(self.model.features(x))

    def training_step(self, batch, batch_idx):
        x = batch["x"]
        z = self.embed(torch.cat([self.views(x), self.views(x)]))
        if self.loss_fn is not None:
            loss = self.loss_fn(z, batch)
        else:
            loss = nt_xent(z[: len(x)], z[len(x) :], self.temperature, self.symmetric)
        self.log("ssl/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def configure_optimizers(self):
        params = [*self.model.backbone.parameters(), *self.projector.parameters()]
        head = {id(p) for p in self.model.head.parameters()}
        return configure_optimizers([p for p in params if id(p) not in head], self.optim, self.schedule_epochs)
