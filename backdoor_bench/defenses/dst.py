"""D-ST: distinguishment and secure training (Chen, Wu and Wang, "Effective Backdoor Defense by
Exploiting Sensitivity of Poisoned Samples", NeurIPS 2022, Sec. 3.3 and App. A.2).

1. The SD module splits the training set into clean, uncertain and poisoned parts (sensitivity.py).
2. ST-1: a fresh `cfg.model` backbone and a projector (no BatchNorm) learn from scratch on all
   samples with SS-CTL (Eq. 2): SupCon positives (same given label) for clean-split anchors,
   SimCLR positives (the other view) for the rest; every row in the denominator.
3. ST-2: a linear head on the frozen encoder (eval mode) with the mixed cross-entropy (Eq. 3) on
   the clean and poisoned splits: CE on D_c minus lambda_p x CE on D_p. The uncertain split is left out.
The model is the encoder plus the head; the verdict is the split (flagged = the poisoned split,
trusted = the clean split), its scores the SD metric.

Ablations: `extractor` ctl (SimCLR positives only) or s_ctl (SupCon on every given label) for
Table 3; `classifier: ce` trains the head with CE on every sample, which with `ctl`/`s_ctl` gives
the paper's Baseline1/Baseline2 of Table 1 (no split needed); `lambda_p` for Fig. 6.
The encoder is cached by everything that determines it, so a lambda_p sweep trains it once.
"""

from __future__ import annotations

import hashlib
import logging

import pytorch_lightning as pl
import torch

from backdoor_bench.data.augment import SimCLRViews
from backdoor_bench.data.loader import DeviceLoader
from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome, Verdict
from backdoor_bench.defenses.sensitivity import (
    CLEAN,
    POISONED,
    plain,
    sample_split,
    split_counts,
    validate_sd,
)
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.losses import (
    contrastive_positives,
    cross_entropy,
    mixed_cross_entropy,
    sup_con,
)
from backdoor_bench.training.optim import configure_optimizers
from backdoor_bench.training.simclr import SimCLR

log = logging.getLogger(__name__)

EXTRACTORS = ("ss_ctl", "ctl", "s_ctl")
CLASSIFIERS = ("mce", "ce")


class _FrozenEncoderHead(pl.LightningModule):
    """ST-2: the head on features of one augmented view; the encoder frozen and in eval mode.
    `lambda_p` None: plain CE on every sample (the baselines); else MCE with the batch's `poisoned` flags."""

    def __init__(self, model: torch.nn.Module, views, optim: dict, schedule_epochs: int, lambda_p: float | None):
        super().__init__()
        self.model, self.views, self.optim, self.schedule_epochs, self.lambda_p = (
            model,
            views,
            optim,
            schedule_epochs,
            lambda_p,
        )

    def training_step(self, batch, batch_idx):
        self.model.eval()
        with torch.no_grad():
            f = self.model.features(self.views(batch["x"]))
        logits = self.model.head(f)
        if self.lambda_p is None:
            loss = cross_entropy(logits, batch["y"])
        else:
            loss = mixed_cross_entropy(logits, batch["y"], batch["poisoned"], self.lambda_p)
        self.log("dst_head/loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(batch["y"]))
        return loss

    def configure_optimizers(self):
        return configure_optimizers(self.model.head.parameters(), self.optim, self.schedule_epochs)


class DST(Defense):
    """Args: `sd` (the SD module's config, shared with D-BR), `extractor` (ss_ctl, ctl, s_ctl),
    `clean_pos_only` (SS-CTL positives of clean anchors only among clean-split rows; the code's
    mask, false, is the default: the official code's choice where the paper is silent), `encoder` (epochs, batch_size, temperature,
    base_temperature, projector_dim, optimizer, augment), `classifier` (mce, ce), `lambda_p`,
    `head` (epochs, batch_size, optimizer)."""

    def __init__(
        self,
        name: str = "dst",
        sd: dict | None = None,
        extractor: str = "ss_ctl",
        clean_pos_only: bool = False,
        encoder: dict | None = None,
        classifier: str = "mce",
        lambda_p: float = 0.001,
        head: dict | None = None,
        **kw,
    ):
        super().__init__(name=name, **kw)
        if extractor not in EXTRACTORS:
            raise ConfigError(f"defense.extractor={extractor!r} is unknown: use one of {', '.join(EXTRACTORS)}")
        if classifier not in CLASSIFIERS:
            raise ConfigError(f"defense.classifier={classifier!r} is unknown: use one of {', '.join(CLASSIFIERS)}")
        if float(lambda_p) < 0:
            raise ConfigError(f"defense.lambda_p={lambda_p} must be >= 0 (the paper: 0.001)")
        self.sd, self.extractor, self.clean_pos_only = plain(sd), extractor, bool(clean_pos_only)
        self.encoder, self.classifier, self.lambda_p, self.head = (
            plain(encoder),
            classifier,
            float(lambda_p),
            plain(head),
        )
        if self.uses_split:
            validate_sd(self.sd)

    @property
    def uses_split(self) -> bool:
        return self.extractor == "ss_ctl" or self.classifier == "mce"

    def run(self, ctx: DefenseContext) -> Outcome:
        scores, groups = sample_split(ctx, self.sd) if self.uses_split else (None, None)
        model = self._encoder(ctx, groups)
        self._train_head(ctx, model, groups)
        extra = {"extractor": self.extractor, "classifier": self.classifier, "lambda_p": self.lambda_p}
        verdict = None
        if groups is not None:
            extra.update(split_counts(groups, ctx.train.y, ctx.train.num_classes))
            verdict = Verdict(kept=groups != POISONED, scores=scores, trusted=groups == CLEAN)
        return Outcome(model=model, verdict=verdict, extra=extra)

    def _encoder(self, ctx: DefenseContext, groups: torch.Tensor | None) -> torch.nn.Module:
        """ST-1, cached by the extractor, its config and the samples it supervises (SS-CTL: the clean split)."""
        e = self.encoder
        epochs = ctx.stage_epochs(
            e["epochs"],
            len(ctx.train),
            int(e["batch_size"]),
            int(e.get("min_steps") or 0),
            drop_last=len(ctx.train) > int(e["batch_size"]),
        )
        supervised = {
            "ctl": torch.zeros(len(ctx.train), dtype=torch.bool),
            "s_ctl": torch.ones(len(ctx.train), dtype=torch.bool),
        }.get(self.extractor)
        if supervised is None:
            supervised = groups == CLEAN
        spec = {
            "extractor": self.extractor,
            "encoder": {**e, "epochs": epochs},
            "seed": ctx.seed,
            "supervised": hashlib.sha256(supervised.numpy().tobytes()).hexdigest()[:16],  # the split itself
            **({"clean_pos_only": self.clean_pos_only} if self.extractor == "ss_ctl" else {}),
        }

        def build() -> dict:
            model = ctx.new_model()
            views = SimCLRViews(ctx.train.shape[-1], ctx.train.shape[0], **dict(e["augment"]))
            t, t_base, pos_only = float(e["temperature"]), float(e["base_temperature"]), self.clean_pos_only

            def loss_fn(z, batch):
                return sup_con(z, contrastive_positives(batch["y"], batch["supervised"], pos_only), t, t_base)

            module = SimCLR(
                model,
                views,
                dict(e["optimizer"]),
                epochs,
                projector_dim=int(e["projector_dim"]),
                channels_last=ctx.channels_last,
                loss_fn=loss_fn,
                projector_bn=False,
            )
            bs = int(e["batch_size"])
            ctx.fit(
                "dst_encoder",
                module,
                ctx.train,
                epochs,
                resumable=True,
                loader=lambda device: DeviceLoader(
                    ctx.train.x,
                    ctx.train.y,
                    bs,
                    shuffle=True,
                    device=device,
                    seed=ctx.seed,
                    drop_last=len(ctx.train) > bs,
                    extras={"supervised": supervised},
                ),
            )
            return {"state_dict": model.cpu().state_dict()}

        model = ctx.new_model()
        model.load_state_dict(ctx.cached("dst_encoder", spec, build)["state_dict"])
        return model

    def _train_head(self, ctx: DefenseContext, model: torch.nn.Module, groups: torch.Tensor | None) -> None:
        """ST-2 on D_c and D_p with MCE, or on every sample with CE."""
        h = self.head
        torch.manual_seed(ctx.seed)
        model.head.reset_parameters()
        if self.classifier == "mce":
            idx = (groups != 1).nonzero().flatten()
            data, extras = ctx.train.subset(idx), {"poisoned": (groups[idx] == POISONED)}
        else:
            data, extras = ctx.train, {}
        epochs = ctx.stage_epochs(h["epochs"], len(data), int(h["batch_size"]), int(h.get("min_steps") or 0))
        views = SimCLRViews(ctx.train.shape[-1], ctx.train.shape[0], **dict(self.encoder["augment"]))
        module = _FrozenEncoderHead(
            model, views, dict(h["optimizer"]), epochs, self.lambda_p if self.classifier == "mce" else None
        )
        ctx.fit("dst_head", module, data, epochs, augment=False, batch_size=int(h["batch_size"]), extras=extras)
