"""FT: fine-tuning the backdoored model on a small trusted clean set, the baseline repair that
Fine-Pruning (Liu, Dolan-Gavitt and Garg, RAID 2018, Sec. 3) starts from and that D-BR (Chen, Wu
and Wang, NeurIPS 2022, Table 2) and BackdoorBench (Wu et al., NeurIPS 2022 Datasets and
Benchmarks) compare against.

The cached backdoored model (copied) is trained with cross-entropy on the trusted clean subset
(`clean_fraction` of the training set; BackdoorBench's `ratio` 0.05, D-BR gives 1%:
`defense=ft/dbr`) with the dataset's augmentation. The recipe is BackdoorBench's
(`config/defense/ft/cifar10.yaml`): 100 epochs, batch 256, SGD lr 0.01, momentum 0.9, weight
decay 5e-4, cosine schedule. The last epoch's model is the result (no checkpoint is selected on
any test data).
"""

from __future__ import annotations

import copy
import logging

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome
from backdoor_bench.training.recipe import recipe

log = logging.getLogger(__name__)


class FineTuning(Defense):
    """Args: `clean_fraction` (the trusted clean subset), `epochs`, `batch_size`, `optimizer`."""

    needs_clean = True

    def __init__(
        self,
        name: str = "ft",
        epochs: int = 100,
        batch_size: int = 256,
        optimizer: dict | None = None,
        **kw,
    ):
        super().__init__(name=name, **kw)
        self.recipe = recipe(epochs, batch_size, optimizer or {"name": "sgd", "lr": 0.01})

    def run(self, ctx: DefenseContext) -> Outcome:
        model = copy.deepcopy(ctx.backdoored_model())
        r = self.recipe
        ctx.finetune(model, "ft", r.epochs, optimizer=r.optimizer, batch_size=r.batch_size)
        log.info("ft: fine-tuned the backdoored model on %d trusted clean samples", len(ctx.clean))
        return Outcome(model=model.cpu(), extra={"n_clean": len(ctx.clean), "epochs": ctx.stage_length(r.epochs)})
