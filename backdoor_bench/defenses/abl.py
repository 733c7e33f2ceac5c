"""ABL: anti-backdoor learning (Li, Lyu, Koren, Lyu, Li and Ma, NeurIPS 2021).

1. Isolation (Sec. 4.1): a fresh model trained on the poisoned set with local gradient ascent
   (LGA, Eq. 3: the CE held near `gamma`) for `isolation_epochs`; the `isolation_ratio` share of
   samples with the lowest loss is isolated (the shared loss-guided isolation, training/isolation.py).
2. Fine-tuning (the official code's `finetuning_ascent_model`): the same model trained on the
   samples that were not isolated, with CE, for `finetuning_epochs`.
3. Unlearning (Sec. 4.2, Eq. 4): gradient ascent on the CE of the isolated samples for
   `unlearning_epochs` (the shared gradient-ascent unlearning, training/unlearning.py).
The verdict is the isolation (flagged = isolated), so the report shows its precision; the model
is the one after unlearning (the last epoch's: no checkpoint is picked on test data).
Defaults: the official code's CIFAR-10 settings, which BackdoorBench's `abl/cifar10.yaml` also
uses: 20 isolation epochs at lr 0.1, gamma 0.5, 1% isolated, 60 fine-tuning epochs at lr 0.1,
20 unlearning epochs at lr 5e-4, SGD momentum 0.9, weight decay 1e-4, batch 64 (ABL's code). The
fine-tuning rate follows a cosine schedule (our choice; see docs/fidelity.md).
"""

from __future__ import annotations

import logging

import torch

from backdoor_bench.data.loader import DeviceLoader
from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome, Verdict
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.isolation import lga_isolation_scores, lowest_share
from backdoor_bench.training.supervised import Supervised
from backdoor_bench.training.unlearning import Phases, SignedCE

log = logging.getLogger(__name__)


def isolate(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """bool mask of the `ratio` share of samples with the highest suspicion `scores` (= lowest
    loss under the LGA model; ties by index)."""
    return lowest_share(-scores, ratio)


class ABL(Defense):
    """Args: `isolation_epochs`, `isolation_ratio`, `gamma`, `finetuning_epochs`,
    `unlearning_epochs`, `batch_size`, `isolation_optimizer`, `finetuning_optimizer`,
    `unlearning_optimizer` (configs like `trainer.optimizer`)."""

    def __init__(
        self,
        name: str = "abl",
        isolation_epochs: int = 20,
        isolation_ratio: float = 0.01,
        gamma: float = 0.5,
        finetuning_epochs: int = 60,
        unlearning_epochs: int = 20,
        batch_size: int = 64,
        isolation_optimizer: dict | None = None,
        finetuning_optimizer: dict | None = None,
        unlearning_optimizer: dict | None = None,
        **kw,
    ):
        super().__init__(name=name, **kw)
        if not 0 < float(isolation_ratio) < 1:
            raise ConfigError(f"defense.isolation_ratio={isolation_ratio} must be a share in (0, 1)")
        if float(gamma) <= 0:
            raise ConfigError(f"defense.gamma={gamma} must be > 0: the loss level LGA holds")
        if min(int(isolation_epochs), int(unlearning_epochs), int(batch_size)) < 1 or int(finetuning_epochs) < 0:
            raise ConfigError(
                "defense.isolation_epochs, unlearning_epochs and batch_size must be >= 1, finetuning_epochs >= 0"
            )
        self.isolation_epochs, self.isolation_ratio, self.gamma = (
            int(isolation_epochs),
            float(isolation_ratio),
            float(gamma),
        )
        self.finetuning_epochs, self.unlearning_epochs = int(finetuning_epochs), int(unlearning_epochs)
        self.batch_size = int(batch_size)
        sgd = {"name": "sgd", "momentum": 0.9, "weight_decay": 1e-4}
        self.isolation_optimizer = dict(isolation_optimizer or {**sgd, "lr": 0.1, "schedule": "constant"})
        self.finetuning_optimizer = dict(finetuning_optimizer or {**sgd, "lr": 0.1, "schedule": "cosine"})
        self.unlearning_optimizer = dict(unlearning_optimizer or {**sgd, "lr": 5e-4, "schedule": "constant"})

    def run(self, ctx: DefenseContext) -> Outcome:
        model = ctx.new_model()
        isolation = ctx.stage_epochs(self.isolation_epochs, len(ctx.train), self.batch_size)
        scores = lga_isolation_scores(
            lambda name, module, data, epochs: ctx.fit(
                name, module, data, epochs, batch_size=self.batch_size, resumable=True
            ),
            model,
            ctx.train,
            optimizer=self.isolation_optimizer,
            epochs=isolation,
            gamma=self.gamma,
            channels_last=ctx.channels_last,
            device=ctx.device,
            name="abl_isolation",
        )
        isolated = isolate(scores, self.isolation_ratio)
        log.info("abl: isolated %d of %d samples (the lowest LGA losses)", int(isolated.sum()), len(isolated))

        finetune = ctx.stage_length(self.finetuning_epochs) if self.finetuning_epochs else 0
        if finetune:
            rest = ctx.train.subset((~isolated).nonzero().flatten())
            module = Supervised(
                model, self.finetuning_optimizer, finetune, channels_last=ctx.channels_last, log_prefix="abl_finetune"
            )
            ctx.fit("abl_finetune", module, rest, finetune, batch_size=self.batch_size, resumable=True)

        unlearn = ctx.stage_length(self.unlearning_epochs)
        idx = isolated.nonzero().flatten()

        def loader(device):
            return Phases(
                [
                    (
                        DeviceLoader(
                            ctx.train.x[idx],
                            ctx.train.y[idx],
                            self.batch_size,
                            shuffle=True,
                            augment=ctx.augment,
                            device=device,
                            seed=ctx.seed,
                        ),
                        -1.0,
                    )
                ]
            )

        module = SignedCE(model, self.unlearning_optimizer, unlearn, ctx.channels_last, log_prefix="abl")
        ctx.fit("abl_unlearn", module, ctx.train, unlearn, loader=loader)
        extra = {
            "n_isolated": int(isolated.sum()),
            "isolation_epochs": isolation,
            "finetuning_epochs": finetune,
            "unlearning_epochs": unlearn,
        }
        return Outcome(model=model.cpu(), verdict=Verdict(kept=~isolated, scores=scores), extra=extra)
