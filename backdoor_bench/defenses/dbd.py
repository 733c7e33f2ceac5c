"""DBD: backdoor defense via decoupling the training process (Huang, Li, Wu, Qin and Ren, ICLR 2022).

1. Self-supervised backbone: SimCLR on the unlabeled poisoned set (`ctx.ssl_backbone()`, Sec. 4.3).
2. Warm-up: the backbone frozen, a linear head trained on all samples with SCE (Sec. 4.4).
3. Semi-supervised fine-tuning of the whole model with MixMatch (Sec. 4.5): at every epoch's
   start the `epsilon` share of samples with the lowest loss is labeled, the rest unlabeled.

`variant` selects the ablation of Table 3: `full` (DBD), `no_ssl` (the backbone of standard
supervised training), `ss_ce` / `ss_sce` (the frozen SSL backbone plus a head trained with CE / SCE
on all samples), `ss_sce_tune` (`ss_sce`, then the head fine-tuned on the high-credible samples).
`loss` swaps SCE for GCE or APL (Table 26). The verdict keeps the final high-credible set.
"""

from __future__ import annotations

import copy
import logging

import torch

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome, Verdict
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.fit import per_sample_loss
from backdoor_bench.training.isolation import lowest_share
from backdoor_bench.training.losses import LOSSES, get_loss
from backdoor_bench.training.mixmatch import MixMatch, SemiLoader
from backdoor_bench.training.supervised import Supervised

log = logging.getLogger(__name__)

VARIANTS = ("full", "no_ssl", "ss_ce", "ss_sce", "ss_sce_tune")


def high_credible(losses: torch.Tensor, epsilon: float) -> torch.Tensor:
    """bool mask of the `epsilon` share of samples with the smallest loss (Sec. 4.4; ties by index)."""
    return lowest_share(losses, epsilon)


class DBD(Defense):
    """Args: `variant` (see the module docstring), `loss` (sce, gce, apl) and `loss_args` per loss,
    `epsilon` (the labeled share, the paper's alpha = 50%), `warmup_epochs` (10), `finetune_epochs`
    (190), `tune_epochs` (`ss_sce_tune`'s head fine-tuning), `batch_size` (warm-up, 128),
    `optimizer` (Adam 0.002, constant), `mixmatch` (batch_size 64, iterations 1024, T 0.5, K 2,
    alpha 0.75, lambda_u 15, rampup_epochs 190), `score_augment` (rank losses on augmented views,
    as DBD's code does), `warmup_min_steps` (the warm-up runs at least this many steps: the paper's
    10 epochs are 3,910 steps on CIFAR-10, 120 on digits, too few for the head to learn)."""

    def __init__(
        self,
        name: str = "dbd",
        variant: str = "full",
        loss: str = "sce",
        loss_args: dict | None = None,
        epsilon: float = 0.5,
        warmup_epochs: int = 10,
        finetune_epochs: int = 190,
        tune_epochs: int = 10,
        batch_size: int = 128,
        optimizer: dict | None = None,
        mixmatch: dict | None = None,
        score_augment: bool = True,
        warmup_min_steps: int = 0,
        **kw,
    ):
        super().__init__(name=name, **kw)
        if variant not in VARIANTS:
            raise ConfigError(f"defense.variant={variant!r} is unknown: use one of {', '.join(VARIANTS)}")
        if loss not in LOSSES:
            raise ConfigError(f"defense.loss={loss!r} is unknown: use one of {', '.join(LOSSES)}")
        if not 0 < float(epsilon) < 1:
            raise ConfigError(f"defense.epsilon={epsilon} must be a fraction in (0, 1): the labeled share")
        if min(int(warmup_epochs), int(finetune_epochs), int(tune_epochs), int(batch_size)) < 1:
            raise ConfigError("defense.warmup_epochs, finetune_epochs, tune_epochs and batch_size must be >= 1")
        self.variant, self.loss, self.epsilon = variant, loss, float(epsilon)
        self.loss_args = dict((loss_args or {}).get(loss) or {})
        self.warmup_epochs, self.finetune_epochs, self.tune_epochs = (
            int(warmup_epochs),
            int(finetune_epochs),
            int(tune_epochs),
        )
        self.batch_size, self.score_augment = int(batch_size), bool(score_augment)
        self.warmup_min_steps = int(warmup_min_steps)
        self.optimizer = dict(optimizer or {"name": "adam", "lr": 0.002, "schedule": "constant"})
        self.mixmatch = {
            "batch_size": 64,
            "iterations": 1024,
            "T": 0.5,
            "K": 2,
            "alpha": 0.75,
            "lambda_u": 15.0,
            "rampup_epochs": 190,
            **(mixmatch or {}),
        }

    def run(self, ctx: DefenseContext) -> Outcome:
        model = self._backbone(ctx)
        warm_loss, warm_args = ("ce", {}) if self.variant == "ss_ce" else (self.loss, self.loss_args)
        warmup = ctx.stage_epochs(self.warmup_epochs, len(ctx.train), self.batch_size, self.warmup_min_steps)
        ctx.fit(
            "dbd_warmup",
            Supervised(
                model,
                self.optimizer,
                warmup,
                loss=warm_loss,
                loss_args=warm_args,
                head_only=True,
                channels_last=ctx.channels_last,
                log_prefix="dbd_warmup",
            ),
            ctx.train,
            warmup,
            batch_size=self.batch_size,
        )
        score_fn = get_loss(warm_loss, **warm_args)
        state = {"round": 0}

        def split() -> torch.Tensor:
            """Rank every training sample by its loss; the lowest `epsilon` share is labeled."""
            device = next(model.parameters()).device  # inside a fit: the trainer's device
            state["scores"] = per_sample_loss(
                model,
                ctx.train.x,
                ctx.train.y,
                score_fn,
                device=device,
                augment=ctx.augment if self.score_augment else None,
                seed=ctx.seed + state["round"],
            )  # fresh views every epoch
            state["kept"] = high_credible(state["scores"], self.epsilon)
            state["round"] += 1
            return state["kept"]

        extra = {"variant": self.variant, "loss": warm_loss, "warmup_epochs": warmup}
        if self.variant in ("ss_ce", "ss_sce"):
            split()
        elif self.variant == "ss_sce_tune":
            tune = ctx.stage_length(self.tune_epochs)
            kept = split()
            ctx.fit(
                "dbd_tune",
                Supervised(
                    model,
                    self.optimizer,
                    tune,
                    loss=warm_loss,
                    loss_args=warm_args,
                    head_only=True,
                    channels_last=ctx.channels_last,
                    log_prefix="dbd_tune",
                ),
                ctx.train.subset(kept.nonzero().flatten()),
                tune,
                batch_size=self.batch_size,
            )
            extra["tune_epochs"] = tune
        else:
            # the ramp-up counts the paper's warm-up epochs, not the ones a step floor added
            extra.update(self._finetune(ctx, model, split, ctx.stage_length(self.warmup_epochs)))
            if "kept" not in state:  # resumed from a checkpoint of the finished stage: judge once now
                split()
        # the final labeled set's share of every given class (a class the split leaves unlabeled is
        # learned only through MixMatch's guessed labels)
        k = ctx.train.num_classes
        labeled, total = (torch.bincount(y, minlength=k) for y in (ctx.train.y[state["kept"]], ctx.train.y))
        extra["labeled_share_per_class"] = [round(float(v), 4) for v in labeled / total.clamp(min=1)]
        verdict = Verdict(kept=state["kept"], scores=state["scores"])
        return Outcome(model=model, verdict=verdict, extra=extra)

    def _backbone(self, ctx: DefenseContext) -> torch.nn.Module:
        """Stage 1: the SSL backbone, or for `no_ssl` the backdoored model's; a fresh head either way."""
        if self.variant == "no_ssl":
            model = copy.deepcopy(ctx.backdoored_model())
        else:
            model = ctx.ssl_backbone()
        torch.manual_seed(ctx.seed)
        model.head.reset_parameters()
        return model

    def _finetune(self, ctx: DefenseContext, model: torch.nn.Module, split, warmup: int) -> dict:
        """Stage 3: MixMatch on the whole model, re-splitting at every epoch (as DBD's official code
        does: the labeled set is re-drawn from the current model's losses at each epoch's start)."""
        m = self.mixmatch
        epochs, iterations = ctx.stage_length(self.finetune_epochs), ctx.stage_length(m["iterations"], "steps")
        module = MixMatch(
            model,
            self.optimizer,
            epochs,
            ctx.train.num_classes,
            T=float(m["T"]),
            alpha=float(m["alpha"]),
            lambda_u=float(m["lambda_u"]),
            rampup_epochs=float(m["rampup_epochs"]),
            epoch_offset=warmup,
            channels_last=ctx.channels_last,
        )
        ctx.fit(
            "dbd_mixmatch",
            module,
            ctx.train,
            epochs,
            resumable=True,  # an interrupted run resumes here
            loader=lambda device: SemiLoader(
                ctx.train.x,
                ctx.train.y,
                split,
                int(m["batch_size"]),
                iterations,
                int(m["K"]),
                ctx.augment,
                device=device,
                seed=ctx.seed,
            ),
        )
        return {"finetune_epochs": epochs, "iterations": iterations}
