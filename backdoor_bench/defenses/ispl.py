"""Inverse self-paced learning plus boosting ("Defending Against Backdoor Attacks Using Ensembles
of Weak Learners", anonymous ICLR 2022 submission, Sec. 4-5 and App. B.1; where the text leaves a
value open, the authors' code's).

1. ISPL (Algorithm 2) extracts one homogeneous component of the active pool A: a
   learner f (one model, one optimizer, kept across iterations) alternates training on a
   subsample of the current low-loss set and scoring all of A. Losses are smoothed with momentum
   eta; the kept share beta_i anneals from 3 dp to dp; each class keeps at least its beta_i / 8
   lowest. The last trimmed set is the component S; a fresh weak learner g trains on S.
2. Components are extracted in sequence (A <- A minus S) until `components` are found or A is
   small; the whole sequence is repeated `runs` times (Algorithm 1).
3. Boosting vote (Algorithm 1): every weak learner predicts every training sample;
   a sample is kept where the modal vote (ties broken at random) equals its given label and more
   than one learner cast it.
4. Self-training (App. B.1): a model trained on the kept set re-selects, every few
   epochs, the samples whose labels agree with its predictions, smoothed with momentum 0.8.
5. The shared retrain on the kept set (no relabeling).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome, Verdict
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.fit import per_sample_loss, predict
from backdoor_bench.training.supervised import Supervised

log = logging.getLogger(__name__)


def ispl_schedule(pool: int, n0: int, p: float) -> tuple[float, list[float]]:
    """(dp, [beta_0 .. beta_{N-1}]) for a pool of `pool` of `n0` samples and target share `p`
    (Algorithm 2 and the authors' code): dp = min(1, p n0 / pool), N = 2 + clip(floor(1 / dp), 1, 3),
    beta_i = clip(min(3, max(1, N - 2 - i)) dp, 0, 1)."""
    dp = min(1.0, p * n0 / pool)
    n = 2 + min(3, max(1, math.floor(1 / dp)))
    return dp, [min(1.0, min(3, max(1, n - 2 - i)) * dp) for i in range(n)]


def trim(m: torch.Tensor, y: torch.Tensor, beta: float, floor: float = 1 / 8) -> torch.Tensor:
    """Spec C.2 item 3e: the samples whose smoothed loss is within the global beta-quantile,
    plus, in every class, those within the class's (beta * floor)-quantile."""
    keep = m <= torch.quantile(m, beta)
    for c in y.unique():
        in_c = y == c
        keep |= in_c & (m <= torch.quantile(m[in_c], beta * floor))
    return keep


def vote(preds: torch.Tensor, num_classes: int, generator: torch.Generator | None = None):
    """(mode, count) of `preds` [learners, N] per sample; ties are broken uniformly at random
    (Algorithm 1)."""
    counts = F.one_hot(preds, num_classes).sum(0).float()  # [N, C]
    jitter = torch.rand(counts.shape, generator=generator)  # < 1: only breaks ties
    mode = (counts + jitter).argmax(1)
    return mode, counts.gather(1, mode[:, None]).squeeze(1).long()


class _Incremental(Supervised):
    """A learner trained in several fits with one optimizer (the weak learner f of Algorithm 2)."""

    def configure_optimizers(self):
        if not hasattr(self, "_optimizers"):
            self._optimizers = super().configure_optimizers()
        return self._optimizers


class ISPL(Defense):
    """Args (App. B.1): `runs` (3), `components` (8), `coverage` (0.96: the components together
    cover this share, so p = coverage / components), `expansion` (alpha, 0.25: the share of the
    trimmed set trained on), `momentum` (eta, 0.9), `class_floor` (1/8), `warmup_epochs` (8),
    `iteration_epochs` (4), `learner_epochs` (40), `learner_min_steps` (the weak learner g runs at
    least this many steps: 40 epochs of a 6,000-sample component are 1,875 on CIFAR-10, 80 on
    digits), `min_pool` (a run stops when the pool holds
    at most this share of the data: 2000 of 50000), `self_train` (rounds 20, epochs 5, momentum
    0.8, threshold 0.5, min_steps per round), `augmented_views` (score and vote on augmented views, as the code does),
    `batch_size` (128), `optimizer` (the weak learners' and self-training's; the PreActResNet-18
    values, constant rate as the code's milestones never trigger)."""

    def __init__(
        self,
        name: str = "ispl",
        runs: int = 3,
        components: int = 8,
        coverage: float = 0.96,
        expansion: float = 0.25,
        momentum: float = 0.9,
        class_floor: float = 1 / 8,
        warmup_epochs: int = 8,
        iteration_epochs: int = 4,
        learner_epochs: int = 40,
        learner_min_steps: int = 0,
        min_pool: float = 0.04,
        self_train: dict | None = None,
        augmented_views: bool = True,
        batch_size: int = 128,
        optimizer: dict | None = None,
        **kw,
    ):
        super().__init__(name=name, **kw)
        if int(runs) < 1 or int(components) < 1:
            raise ConfigError("defense.runs and defense.components must be >= 1")
        for key, v in (("coverage", coverage), ("expansion", expansion), ("class_floor", class_floor)):
            if not 0 < float(v) <= 1:
                raise ConfigError(f"defense.{key}={v} must be in (0, 1]")
        if not 0 <= float(momentum) < 1 or not 0 <= float(min_pool) < 1:
            raise ConfigError("defense.momentum and defense.min_pool must be in [0, 1)")
        self.runs, self.components, self.p = int(runs), int(components), float(coverage) / int(components)
        self.expansion, self.momentum, self.class_floor = float(expansion), float(momentum), float(class_floor)
        self.warmup_epochs, self.iteration_epochs = int(warmup_epochs), int(iteration_epochs)
        self.learner_epochs, self.min_pool = int(learner_epochs), float(min_pool)
        self.learner_min_steps = int(learner_min_steps)
        self.self_train = {
            "rounds": 20,
            "epochs": 5,
            "momentum": 0.8,
            "threshold": 0.5,
            "min_steps": 0,
            **(self_train or {}),
        }
        self.augmented_views, self.batch_size = bool(augmented_views), int(batch_size)
        self.optimizer = dict(
            optimizer or {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "constant"}
        )

    # -- shared mechanics -------------------------------------------------------------------
    def _model(self, ctx: DefenseContext, seed: int) -> torch.nn.Module:
        return ctx.new_model(seed)

    def _train(self, ctx: DefenseContext, module: Supervised, idx: torch.Tensor, epochs: int, name: str):
        ctx.fit(name, module, ctx.train.subset(idx), epochs, batch_size=self.batch_size)

    def _views(self, ctx: DefenseContext, seed: int):
        """The transform scoring and voting see: one augmented view per sample, or the image."""
        if not self.augmented_views:
            return None
        g = torch.Generator(device=ctx.device).manual_seed(seed)
        return lambda xb: ctx.augment(xb, g)

    def _predict(self, ctx: DefenseContext, model: torch.nn.Module, seed: int) -> torch.Tensor:
        return predict(model, ctx.train.x, device=ctx.device, transform=self._views(ctx, seed))

    # -- ISPL -------------------------------------------------------------------------------
    def component(self, ctx: DefenseContext, pool: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Algorithm 2 on the pool (indices into the training set): (component S, the fresh weak
        learner's predictions on every training sample)."""
        n0, y = len(ctx.train), ctx.train.y
        g = torch.Generator().manual_seed(seed)
        dp, betas = ispl_schedule(len(pool), n0, self.p)
        if dp >= 0.999:  # the pool is about one component: take it whole (the authors' code)
            core = pool
        else:
            f = _Incremental(
                self._model(ctx, seed), self.optimizer, 1, channels_last=ctx.channels_last, log_prefix="ispl_f"
            )
            train = pool[torch.rand(len(pool), generator=g) < 0.5] if len(pool) == n0 else pool
            m = torch.zeros(len(pool))
            for i, beta in enumerate(betas):
                epochs = ctx.stage_length(self.warmup_epochs if i == 0 else self.iteration_epochs)
                self._train(ctx, f, train, epochs, "ispl_f")
                loss = per_sample_loss(
                    f.model,
                    ctx.train.x[pool],
                    y[pool],
                    F.cross_entropy,
                    device=ctx.device,
                    augment=ctx.augment if self.augmented_views else None,
                    seed=seed * 31 + i,
                )
                m = (1 - self.momentum) * loss + self.momentum * m
                kept = pool[trim(m, y[pool], beta, self.class_floor)]
                train = kept[torch.rand(len(kept), generator=g) < self.expansion]
                if len(train) == 0:
                    train = kept
            core = kept
        epochs = ctx.stage_epochs(self.learner_epochs, len(core), self.batch_size, self.learner_min_steps)
        learner = Supervised(
            self._model(ctx, seed + 1), self.optimizer, epochs, channels_last=ctx.channels_last, log_prefix="ispl_g"
        )
        self._train(ctx, learner, core, epochs, "ispl_g")
        return core, self._predict(ctx, learner.model, seed + 2)

    def ensemble(self, ctx: DefenseContext) -> tuple[torch.Tensor, list[list[int]]]:
        """All runs of sequential extraction: (predictions [learners, N], component sizes per
        run). Each finished component is checkpointed, so an interrupted run resumes."""
        n0 = len(ctx.train)
        state = ctx.stage_state("ispl_components")
        done = state.load(default=[], check=_check_components)
        preds, sizes = [], []
        for r in range(self.runs):
            pool, sizes_r = torch.arange(n0), []
            for e in range(self.components):
                if len(pool) <= self.min_pool * n0:
                    break
                j = len(preds)
                if j < len(done):
                    core, pred = done[j]["core"], done[j]["pred"]
                else:
                    core, pred = self.component(ctx, pool, seed=ctx.seed * 10007 + 101 * r + 7 * e)
                    done.append({"core": core, "pred": pred})
                    state.save(done)
                pool = pool[~torch.isin(pool, core)]
                preds.append(pred)
                sizes_r.append(len(core))
                log.info(
                    "ispl run %d/%d component %d/%d: %d samples, %d left in the pool",
                    r + 1,
                    self.runs,
                    e + 1,
                    self.components,
                    len(core),
                    len(pool),
                )
            sizes.append(sizes_r)
        return torch.stack(preds), sizes

    # -- boosting and self-training -----------------------------------------------------------
    def self_training(self, ctx: DefenseContext, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """App. B.1's self-paced self-training: (kept set, agreement c, kept count per round)."""
        s, y = self.self_train, ctx.train.y
        model = self._model(ctx, ctx.seed + 3)
        c, counts = torch.full((len(y),), 0.5), []
        for r in range(ctx.stage_length(int(s["rounds"]))):
            if not keep.any():
                break
            # a fresh optimizer every round (as the authors' code)
            epochs = ctx.stage_epochs(int(s["epochs"]), int(keep.sum()), self.batch_size, int(s["min_steps"]))
            module = Supervised(model, self.optimizer, epochs, channels_last=ctx.channels_last, log_prefix="ispl_self")
            self._train(ctx, module, keep.nonzero().flatten(), epochs, "ispl_self")
            agree = (self._predict(ctx, model, ctx.seed + 1000 + r) == y).float()
            c = (1 - float(s["momentum"])) * agree + float(s["momentum"]) * c
            keep = c > float(s["threshold"])
            counts.append(int(keep.sum()))
            log.info("ispl self-training round %d: %d samples kept", r + 1, counts[-1])
        return keep, c, counts

    def run(self, ctx: DefenseContext) -> Outcome:
        preds, sizes = self.ensemble(ctx)
        mode, count = vote(preds, ctx.train.num_classes, torch.Generator().manual_seed(ctx.seed))
        keep = (mode == ctx.train.y) & (count > 1)
        log.info("ispl vote of %d learners keeps %d of %d samples", len(preds), int(keep.sum()), len(keep))
        voted = int(keep.sum())
        keep, c, counts = self.self_training(ctx, keep)
        verdict = Verdict(kept=keep, scores=1 - c)  # scores: disagreement with the given label
        return Outcome(
            model=ctx.retrain(verdict),
            verdict=verdict,
            extra={
                "component_sizes": sizes,
                "learners": len(preds),
                "kept_by_vote": voted,
                "kept_per_self_training_round": counts,
            },
        )


def _check_components(done) -> None:
    """Raise unless `done` is what `ISPL.ensemble` saves: a list of {"core", "pred"} tensors."""
    if not isinstance(done, list) or not all(
        isinstance(d, dict) and isinstance(d.get("core"), torch.Tensor) and isinstance(d.get("pred"), torch.Tensor)
        for d in done
    ):
        raise ValueError("not a list of ISPL components")
