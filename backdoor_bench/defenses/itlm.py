"""Iterative Trimmed Loss Minimization (Shen and Sanghavi, "Learning with Bad Training Data via
Iterative Trimmed Loss Minimization", ICML 2019, Algorithm 1 and section 6), a baseline of the ISPL paper
(its appendix B.1).

Bad samples are fitted later than clean ones, so after a short training they have higher loss.
Each of `rounds` rounds trains a FRESH model on the current kept set (`first_epochs` in the first
round, `epochs` after; the ISPL paper follows the authors' 80 then 40), computes every training
sample's cross-entropy under its given label (the model in eval mode, un-augmented images), and
keeps the round((1 - `trim`) x N) samples with the lowest loss; the first round trains on all
samples. The verdict is the last round's kept set, its scores the last round's losses. Then the
shared retrain on the kept samples.

The ISPL paper keeps alpha = 98% at epsilon = 5% of the source class (the authors' setting) and scales
alpha linearly with epsilon: 96% at 10%, 92% at 20%, i.e. a trim of `trim_factor` (0.4) x
`expected_poison_rate` (epsilon; `defense=itlm/ispl` takes it from the attack). The number of
rounds is not in the ISPL paper; `rounds: 4` is our choice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome, Verdict
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.fit import per_sample_loss

log = logging.getLogger(__name__)


def lowest(loss: torch.Tensor, n: int) -> torch.Tensor:
    """bool [N]: the `n` samples with the lowest loss."""
    kept = torch.zeros(len(loss), dtype=torch.bool)
    kept[loss.topk(n, largest=False).indices] = True
    return kept


def trimmed_rounds(n: int, rounds: int, keep: int, round_loss: Callable[[torch.Tensor, int], torch.Tensor]):
    """(kept masks per round, last round's losses): round r calls `round_loss(kept, r)` (train a
    fresh model on the `kept` samples, return the loss of all `n`) and keeps the `keep` lowest."""
    kept, history, loss = torch.ones(n, dtype=torch.bool), [], None
    for r in range(rounds):
        loss = round_loss(kept, r)
        kept = lowest(loss, keep)
        history.append(kept)
    return history, loss


class ITLM(Defense):
    """Args: `rounds`, `expected_poison_rate` and `trim_factor` (the share removed each round is
    their product; the ISPL paper: 0.4 x epsilon),
    `first_epochs` and `epochs` (the first and later rounds' training, under the trainer's
    stage cap)."""

    def __init__(
        self,
        name: str = "itlm",
        rounds: int = 4,
        expected_poison_rate: float = 0.1,
        trim_factor: float = 0.4,
        first_epochs: int = 80,
        epochs: int = 40,
        **kw,
    ):
        super().__init__(name=name, **kw)
        if min(int(rounds), int(first_epochs), int(epochs)) < 1:
            raise ConfigError("defense.rounds, defense.first_epochs and defense.epochs must be >= 1")
        trim = float(expected_poison_rate) * float(trim_factor)
        if not 0 <= trim < 1:
            raise ConfigError(
                f"defense.expected_poison_rate x defense.trim_factor = {trim} must be a share in [0, 1): "
                "the part removed each round"
            )
        self.rounds, self.trim = int(rounds), float(trim)
        self.first_epochs, self.epochs = int(first_epochs), int(epochs)

    def run(self, ctx: DefenseContext) -> Outcome:
        train, keep = ctx.train, round((1 - self.trim) * len(ctx.train))

        def round_loss(kept: torch.Tensor, r: int) -> torch.Tensor:
            epochs = ctx.stage_length(self.first_epochs if r == 0 else self.epochs)
            model = ctx.train_model(train.subset(kept.nonzero().flatten()), name=f"itlm{r}", epochs=epochs)
            loss = per_sample_loss(model, train.x, train.y, F.cross_entropy, device=ctx.device)
            log.info("itlm round %d: trained %d epochs on %d samples", r + 1, epochs, int(kept.sum()))
            return loss

        history, loss = trimmed_rounds(len(train), self.rounds, keep, round_loss)
        verdict = Verdict(kept=history[-1], scores=loss)
        changed = [int((a != b).sum()) for a, b in zip(history, history[1:])]
        extra = {"rounds": self.rounds, "kept": keep, "changed_per_round": changed}
        return Outcome(model=ctx.retrain(verdict), verdict=verdict, extra=extra)
