"""ASD: adaptively splitting the poisoned dataset (Gao, Bai, Gu, Yang and Xia, "Backdoor Defense
via Adaptively Splitting Poisoned Dataset", CVPR 2023, Sec. 3 and Fig. 2; settings of the official
code's config/baseline_asd.yaml, github.com/KuofengGao/ASD).

A fresh model is trained from scratch with MixMatch (as DBD's third stage: `training/mixmatch.py`)
on two pools that are re-drawn at every epoch's start: the clean pool D_C keeps its labels, the
polluted pool D_P (everything else) is used unlabeled. Every split ranks the samples by their
symmetric cross-entropy (SCE, alpha 0.1, beta 1) under the current model, in eval mode, on
augmented views (as DBD's code). Three stages:

1. class-aware loss-guided split (`class_aware_epochs`, the paper's 60): D_C = the clean seed
   samples (`seed_per_class` = 10 per class, drawn from the trusted clean subset `ctx.clean`)
   plus, in every class, the k lowest-loss samples of that class (the seeds excluded), where k
   grows by `step` (10) every `step_epochs` (5) epochs: k = step x floor(epoch / step_epochs);
2. class-agnostic loss-guided split (`class_agnostic_epochs`, 30): D_C = the lowest-loss
   `epsilon` (50%) of all samples;
3. meta-split (`meta_epochs`, 30): a virtual copy of the model is trained for `meta.epochs` (1)
   epoch on the whole poisoned set with CE (Adam, lr 0.015, batch 128); D_C = the `epsilon` share
   with the smallest loss reduction l(f) - l(f_virtual): poisoned samples, learned fast, lose the
   most loss in one epoch, while clean hard samples lose little and now join D_C.

MixMatch as DBD's (batch 64 labeled + 64 unlabeled, 1024 iterations per epoch, K 2, T 0.5,
alpha 0.75, lambda_u 15 ramped up linearly over all 120 epochs), Adam lr 0.002, no schedule; one
Lightning fit runs all three stages (one optimizer, as the official code), resumable per epoch.
The verdict keeps the last epoch's D_C; its scores are the last split's ranking key (the loss, or
in stage 3 the loss reduction; higher = more suspicious), its `trusted` samples the seeds.

Where we differ from the official code: the seeds come from `ctx.clean` (untouched samples drawn
by the runner) and are found in the training set by their pixels and label; a class with fewer
than `seed_per_class` trusted samples gives what it has (logged). The meta-split scores both
losses on the same augmented views. `meta.layers` (module names) restricts the virtual update, as
the official code updates only ResNet-18's layer3, layer4 and linear head
(`[backbone.net.layer3, backbone.net.layer4]` here; the head is always updated); null updates
every parameter (our default: the paper names no layers for other architectures). As the
official code, stages 2 and 3 rank all samples, seeds included, without forcing the seeds in.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F

from backdoor_bench.data import ImageSet
from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome, Verdict
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.fit import per_sample_loss
from backdoor_bench.training.isolation import lowest_share
from backdoor_bench.training.losses import get_loss
from backdoor_bench.training.mixmatch import MixMatch, SemiLoader

log = logging.getLogger(__name__)

STAGES = ("class_aware", "class_agnostic", "meta")


def balanced_seeds(y: torch.Tensor, per_class: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices (sorted) of up to `per_class` samples of every class, drawn at random (`seed`)."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(num_classes):
        idx = (y == c).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picks).sort().values if picks else torch.zeros(0, dtype=torch.long)


def locate(train: ImageSet, samples: ImageSet) -> torch.Tensor:
    """The index in `train` of each of `samples` (same pixels and label); distinct indices for
    repeated samples. A RuntimeError when one is not in `train`."""
    where: dict[tuple, list[int]] = {}
    for i in range(len(train)):
        where.setdefault((train.x[i].numpy().tobytes(), int(train.y[i])), []).append(i)
    out = []
    for j in range(len(samples)):
        hits = where.get((samples.x[j].numpy().tobytes(), int(samples.y[j])))
        if not hits:
            raise RuntimeError(f"trusted sample {j} is not in the training set")
        out.append(hits.pop(0))
    return torch.tensor(out, dtype=torch.long)


def class_aware_count(epoch: int, step: int, step_epochs: int) -> int:
    """Samples per class the class-aware split adds to the seeds at `epoch` (0-based): `step`
    more every `step_epochs` epochs, from none in the first `step_epochs` epochs."""
    return int(step) * (int(epoch) // int(step_epochs))


def class_aware_pool(loss: torch.Tensor, y: torch.Tensor, seeds: torch.Tensor, per_class: int) -> torch.Tensor:
    """bool [N]: the seeds (bool [N]) plus, in every class, the `per_class` non-seed samples with
    the lowest loss (all of them when the class has fewer; ties by index)."""
    pool = seeds.clone()
    if per_class <= 0:
        return pool
    for c in y.unique().tolist():
        idx = ((y == c) & ~seeds).nonzero().flatten()
        pool[idx[torch.sort(loss[idx], stable=True).indices[:per_class]]] = True
    return pool


def stage_of(epoch: int, lengths: tuple[int, int, int]) -> str:
    """The stage an epoch (0-based) belongs to; epochs past the end belong to the last."""
    if epoch < lengths[0]:
        return STAGES[0]
    return STAGES[1] if epoch < lengths[0] + lengths[1] else STAGES[2]


def virtual_update(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    layers: list[str] | None = None,
    augment=None,
    seed: int = 0,
) -> torch.nn.Module:
    """A copy of `model` trained (train mode) with CE and Adam(`lr`) for `epochs` passes over the
    uint8 images `x` in shuffled batches, updating the parameters of `layers` and the head (every
    parameter when `layers` is None). `model` itself is left as it was."""
    virtual = copy.deepcopy(model).train()
    device = next(virtual.parameters()).device
    if layers is None:
        params = list(virtual.parameters())
    else:
        modules = dict(virtual.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            raise ConfigError(
                f"defense.meta.layers={list(layers)}: {missing} are not layers of {type(model).__name__}: use null "
                f"(every parameter) or names among: {', '.join(n for n in modules if n)}"
            )
        params = [p for name in layers for p in modules[name].parameters()] + list(virtual.head.parameters())
    chosen = {id(p) for p in params}
    for p in virtual.parameters():
        p.requires_grad_(id(p) in chosen)
    optimizer = torch.optim.Adam([p for p in virtual.parameters() if id(p) in chosen], lr=lr)
    g = torch.Generator(device=device).manual_seed(seed)
    x, y = x.to(device), y.to(device)
    for _ in range(epochs):
        order = torch.randperm(len(y), device=device, generator=g)
        for i in range(0, len(y), batch_size):
            idx = order[i : i + batch_size]
            xb = x[idx] if augment is None else augment(x[idx], g)
            loss = F.cross_entropy(virtual(xb.float().div_(255)).float(), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return virtual.eval()


class ASD(Defense):
    """Args: `seed_per_class` (10), `step` and `step_epochs` (the class-aware pool grows by 10 per
    class every 5 epochs), `class_aware_epochs`, `class_agnostic_epochs`, `meta_epochs` (60, 30,
    30), `epsilon` (the labeled share of stages 2 and 3, 0.5), `loss_args` (the split's SCE),
    `optimizer` (Adam 0.002, constant), `mixmatch` (as DBD's; `rampup_epochs` null = all epochs),
    `meta` (`lr` 0.015, `epochs` 1, `batch_size` 128, `layers`). `clean_fraction`: the trusted
    subset the seeds are drawn from (it must hold `seed_per_class` of each class)."""

    needs_clean = True

    def __init__(
        self,
        name: str = "asd",
        seed_per_class: int = 10,
        step: int = 10,
        step_epochs: int = 5,
        class_aware_epochs: int = 60,
        class_agnostic_epochs: int = 30,
        meta_epochs: int = 30,
        epsilon: float = 0.5,
        loss_args: dict | None = None,
        optimizer: dict | None = None,
        mixmatch: dict | None = None,
        meta: dict | None = None,
        **kw,
    ):
        super().__init__(name=name, **kw)
        for key, value in (
            ("seed_per_class", seed_per_class),
            ("step_epochs", step_epochs),
            ("class_aware_epochs", class_aware_epochs),
            ("class_agnostic_epochs", class_agnostic_epochs),
            ("meta_epochs", meta_epochs),
        ):
            if int(value) < 1:
                raise ConfigError(f"defense.{key}={value} must be >= 1")
        if int(step) < 0:
            raise ConfigError(f"defense.step={step} must be >= 0 (samples per class added every step_epochs)")
        if not 0 < float(epsilon) < 1:
            raise ConfigError(f"defense.epsilon={epsilon} must be a fraction in (0, 1): the labeled share")
        self.seed_per_class, self.step, self.step_epochs = int(seed_per_class), int(step), int(step_epochs)
        self.lengths = (int(class_aware_epochs), int(class_agnostic_epochs), int(meta_epochs))
        self.epsilon = float(epsilon)
        self.loss_args = dict(loss_args or {"alpha": 0.1, "beta": 1.0})
        self.optimizer = dict(optimizer or {"name": "adam", "lr": 0.002, "schedule": "constant"})
        self.mixmatch = {
            "batch_size": 64,
            "iterations": 1024,
            "T": 0.5,
            "K": 2,
            "alpha": 0.75,
            "lambda_u": 15.0,
            "rampup_epochs": None,
            **(mixmatch or {}),
        }
        self.meta = {"lr": 0.015, "epochs": 1, "batch_size": 128, "layers": None, **(meta or {})}
        if float(self.meta["lr"]) <= 0 or int(self.meta["epochs"]) < 1 or int(self.meta["batch_size"]) < 1:
            raise ConfigError("defense.meta.lr must be > 0, defense.meta.epochs and defense.meta.batch_size >= 1")
        if self.meta["layers"] is not None:
            self.meta["layers"] = [str(name) for name in self.meta["layers"]]

    def seeds(self, ctx: DefenseContext) -> torch.Tensor:
        """bool [N]: the clean seed samples, `seed_per_class` of each class from the trusted subset."""
        clean, k = ctx.clean, ctx.train.num_classes
        picked = balanced_seeds(clean.y, self.seed_per_class, k, ctx.seed)
        counts = torch.bincount(clean.y[picked], minlength=k).tolist()
        short = [c for c in range(k) if counts[c] < self.seed_per_class]
        if short:
            log.warning(
                "asd: the trusted subset holds fewer than %d samples of classes %s (%s): raise "
                "defense.clean_fraction for the paper's class-balanced seeds",
                self.seed_per_class,
                short,
                [counts[c] for c in short],
            )
        mask = torch.zeros(len(ctx.train), dtype=torch.bool)
        mask[locate(ctx.train, clean.subset(picked))] = True
        return mask

    def run(self, ctx: DefenseContext) -> Outcome:
        train = ctx.train
        seeds = self.seeds(ctx)
        lengths = tuple(ctx.stage_length(e) for e in self.lengths)
        epochs = sum(lengths)
        m = self.mixmatch
        iterations = ctx.stage_length(int(m["iterations"]), "steps")
        rampup = float(m["rampup_epochs"]) if m["rampup_epochs"] is not None else float(epochs)
        model = ctx.new_model()
        module = MixMatch(
            model,
            self.optimizer,
            epochs,
            train.num_classes,
            T=float(m["T"]),
            alpha=float(m["alpha"]),
            lambda_u=float(m["lambda_u"]),
            rampup_epochs=rampup,
            channels_last=ctx.channels_last,
        )
        score_fn = get_loss("sce", **self.loss_args)
        state: dict = {"sizes": {s: [] for s in STAGES}}

        def split() -> torch.Tensor:
            """The clean pool for the epoch about to start (the module's current epoch)."""
            epoch = int(module.current_epoch)
            stage = stage_of(epoch, lengths)
            device = next(model.parameters()).device  # inside the fit: the trainer's device
            loss = per_sample_loss(
                model, train.x, train.y, score_fn, device=device, augment=ctx.augment, seed=ctx.seed + epoch
            )
            if stage == "class_aware":
                per_class = class_aware_count(epoch, self.step, self.step_epochs)
                pool, scores = class_aware_pool(loss, train.y, seeds, per_class), loss
            elif stage == "class_agnostic":
                pool, scores = lowest_share(loss, self.epsilon), loss
            else:
                virtual = virtual_update(
                    model,
                    train.x,
                    train.y,
                    lr=float(self.meta["lr"]),
                    epochs=int(self.meta["epochs"]),
                    batch_size=int(self.meta["batch_size"]),
                    layers=self.meta["layers"],
                    augment=ctx.augment,
                    seed=ctx.seed + epoch,
                )
                after = per_sample_loss(
                    virtual, train.x, train.y, score_fn, device=device, augment=ctx.augment, seed=ctx.seed + epoch
                )
                scores = loss - after  # the loss reduction of one virtual epoch: poisoned samples lose most
                pool = lowest_share(scores, self.epsilon)
            state.update(kept=pool, scores=scores)
            state["sizes"][stage].append(int(pool.sum()))
            log.info(
                "asd epoch %d/%d, %s split: clean pool %d of %d", epoch + 1, epochs, stage, int(pool.sum()), len(train)
            )
            return pool

        ctx.fit(
            "asd",
            module,
            train,
            epochs,
            resumable=True,  # an interrupted run resumes at its last finished epoch
            loader=lambda device: SemiLoader(
                train.x,
                train.y,
                split,
                int(m["batch_size"]),
                iterations,
                int(m["K"]),
                ctx.augment,
                device=device,
                seed=ctx.seed,
            ),
        )
        if "kept" not in state:  # resumed from a checkpoint of the finished fit: judge once now
            split()
        extra = {
            "stage_epochs": dict(zip(STAGES, lengths)),
            "iterations": iterations,
            "n_seeds": int(seeds.sum()),
            "pool_sizes": state["sizes"],
        }
        verdict = Verdict(kept=state["kept"], scores=state["scores"], trusted=seeds)
        return Outcome(model=model, verdict=verdict, extra=extra)
