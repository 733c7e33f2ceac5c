"""Neural Cleanse (Wang, Yao, Shan, Li, Viswanath, Zheng and Zhao, "Neural Cleanse: Identifying and
Mitigating Backdoor Attacks in Neural Networks", IEEE S&P 2019, Sec. IV-VI), with unlearning as
the mitigation, as DBD (Huang et al., ICLR 2022, App. B.3) runs it.

1. Reverse engineering (Sec. IV-B, Eq. 3), for every class t: a mask m [H, W] and a pattern
   p [C, H, W], both in [0, 1] through tanh (m = tanh(w_m) / (2 - eps) + 0.5, the same for p,
   eps = 1e-7, Keras' epsilon), stamped as x' = (1 - m) x + m p in pixel space, minimising
   CE(f(x'), t) + lambda |m|_1 with Adam (lr 0.1, betas (0.5, 0.9)) on the trusted clean subset,
   from a uniform random mask and pattern. lambda follows the authors' schedule (`visualizer.py`
   of github.com/bolunwang/backdoor): it starts at 0 and is set to `init_cost` (1e-3) once the
   attack succeeds (>= `attack_succ_threshold` 0.99 of a step's samples go to t) for `patience`
   steps in a row; then it is multiplied by `cost_multiplier` (1.5) after `patience` successful
   steps in a row and divided by `cost_multiplier` ** 1.5 after `patience` failed ones. The kept
   mask is the one of smallest L1 norm among the successful steps (the last one if none
   succeeded). Early stop: once lambda went both up and down, after `early_stop_patience` steps
   in a row whose best norm did not fall below `early_stop_threshold` x the best before.
   One step is `samples_per_step` samples in mini-batches of `batch_size` (the authors' example
   script: 1000 samples, batches of 32, so 31 batches a step, at most `steps` = 1000 steps).
   `patience` 10, `cost_multiplier` 1.5, `early_stop_threshold` 0.99 and `early_stop_patience`
   20 are the `Visualizer` class defaults (the GTSRB example script sets 5, 2, 1.0 and 25).
2. Detection (Sec. IV-C): the L1 norms of the C masks, their median and MAD (x 1.4826, the
   consistency constant for a normal distribution, as `mad_outlier_detection.py`); the anomaly
   index of class t is |norm_t - median| / MAD; a class whose norm is below the median with an
   index above `anomaly_threshold` (2) is flagged as a backdoor target.
3. Mitigation by unlearning (Sec. VI-C): the backdoored model (copied) fine-tuned on the clean
   subset in which `unlearn_share` (20%) of the samples carry a flagged class's reversed trigger
   (flagged classes take turns), labels kept. DBD uses a 5% local benign set (App. B.3,
   `clean_fraction` 0.05). The fine-tuning recipe is BackdoorBench's
   (`config/defense/nc/cifar10.yaml`): 100 epochs, batch 256, SGD 0.01, momentum 0.9, weight
   decay 5e-4, cosine. When no class is flagged the backdoored model is returned unchanged.

`Outcome.extra` holds the anomaly index and mask norm of every class and the flagged classes;
`nc_triggers.png` shows the reversed masks and patterns.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome
from backdoor_bench.defenses.outliers import mad_anomaly
from backdoor_bench.errors import ConfigError
from backdoor_bench.figures import reversed_triggers
from backdoor_bench.training.recipe import recipe

log = logging.getLogger(__name__)

EPSILON = 1e-7  # Keras' K.epsilon(), which NC's tanh parameterisation divides by (2 - eps)


def from_raw(w: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    """The tanh parameterisation: values in (0, 1) from unconstrained `w`."""
    return torch.tanh(w) / (2 - eps) + 0.5


def to_raw(v: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    """The inverse of `from_raw` for values `v` in [0, 1]."""
    return torch.atanh((v.clamp(0, 1) - 0.5) * (2 - eps))


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """x' = (1 - m) x + m p: float images `x` [N, C, H, W] in [0, 1], mask [H, W], pattern [C, H, W]."""
    return (1 - mask) * x + mask * pattern


def trigger_loss(logits: torch.Tensor, target: int, mask: torch.Tensor, cost: float) -> torch.Tensor:
    """CE(logits, t) (mean over the batch) + cost x |m|_1 (NC's Eq. 3 with the L1 norm of the mask)."""
    t = torch.full((len(logits),), int(target), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), t) + cost * mask.abs().sum()


@dataclass
class CostSchedule:
    """NC's schedule of lambda over optimisation steps (`visualizer.py`): `update(success, norm)`
    after each step (success: the step's attack success rate reached the threshold; norm: the
    mask's L1 norm) records the best mask's norm and returns True when the optimisation should
    stop early. `cost` is the lambda of the next step; `improved` whether this step's mask is
    the new best."""

    init_cost: float = 1e-3
    multiplier: float = 1.5
    patience: int = 10
    early_stop: bool = True
    early_stop_threshold: float = 0.99
    early_stop_patience: int = 20

    def __post_init__(self):
        self.cost = 0.0
        self.best = math.inf
        self.improved = False
        self._es_best, self._es_count = math.inf, 0
        self._set, self._up, self._down = 0, 0, 0
        self._went_up = self._went_down = False

    def update(self, success: bool, norm: float) -> bool:
        self.improved = bool(success and norm < self.best)
        if self.improved:
            self.best = norm
        stop = False
        if self.early_stop:
            if self.best < math.inf:
                self._es_count = self._es_count + 1 if self.best >= self.early_stop_threshold * self._es_best else 0
            self._es_best = min(self.best, self._es_best)
            stop = self._went_up and self._went_down and self._es_count >= self.early_stop_patience
        if stop:
            return True
        if self.cost == 0 and success:
            self._set += 1
            if self._set >= self.patience:
                self.cost = self.init_cost
                self._up = self._down = 0
                self._went_up = self._went_down = False
        else:
            self._set = 0
        self._up, self._down = (self._up + 1, 0) if success else (0, self._down + 1)
        if self._up >= self.patience:
            self._up = 0
            self.cost *= self.multiplier
            self._went_up = True
        elif self._down >= self.patience:
            self._down = 0
            self.cost /= self.multiplier**1.5
            self._went_down = True
        return False


def reverse_engineer(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: int,
    schedule: CostSchedule,
    *,
    steps: int,
    batches_per_step: int,
    batch_size: int,
    lr: float = 0.1,
    betas: tuple[float, float] = (0.5, 0.9),
    threshold: float = 0.99,
    seed: int = 0,
    device="cpu",
) -> dict:
    """NC's optimisation for one target class on uint8 images `x` (the model frozen, in eval
    mode): the best mask [H, W] and pattern [C, H, W] (CPU), its L1 norm, its attack success and
    the number of steps run."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    c, h, w = x.shape[1:]
    raw_mask = to_raw(torch.rand(h, w, generator=g)).to(device).requires_grad_(True)
    raw_pattern = to_raw(torch.rand(c, h, w, generator=g)).to(device).requires_grad_(True)
    opt = torch.optim.Adam([raw_mask, raw_pattern], lr=lr, betas=betas)
    data = x.to(device).float().div_(255)
    order, pos = torch.randperm(len(data), generator=g), 0
    best, run = None, 0
    while run < steps:
        run += 1
        hits, seen, norm_sum = 0, 0, 0.0
        for _ in range(batches_per_step):
            if pos >= len(order):
                order, pos = torch.randperm(len(data), generator=g), 0
            idx = order[pos : pos + batch_size]
            pos += len(idx)
            mask, pattern = from_raw(raw_mask), from_raw(raw_pattern)
            logits = model(stamp(data[idx.to(device)], mask, pattern))
            loss = trigger_loss(logits, target, mask, schedule.cost)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hits += int((logits.argmax(1) == target).sum())
            seen += len(idx)
            norm_sum += float(mask.detach().abs().sum()) * len(idx)
        success, norm = hits / seen, norm_sum / seen
        stop = schedule.update(success >= threshold, norm)
        if schedule.improved:
            best = (from_raw(raw_mask).detach().cpu(), from_raw(raw_pattern).detach().cpu(), success)
        if stop:
            break
    if best is None:  # no step reached the threshold: the last mask, as the authors' code
        best = (from_raw(raw_mask).detach().cpu(), from_raw(raw_pattern).detach().cpu(), success)
    mask, pattern, success = best
    return {"mask": mask, "pattern": pattern, "norm": float(mask.abs().sum()), "success": success, "steps": run}


def unlearning_set(x: torch.Tensor, triggers: list[tuple[torch.Tensor, torch.Tensor]], share: float, seed: int):
    """(uint8 images, stamped index): `x` (uint8 [N, C, H, W]) with round(share x N) samples drawn
    (seeded) stamped with the reversed triggers `(mask, pattern)` in turn."""
    g = torch.Generator().manual_seed(seed)
    n = round(share * len(x))
    chosen = torch.randperm(len(x), generator=g)[:n].sort().values
    out = x.clone()
    for i, j in enumerate(chosen.tolist()):
        mask, pattern = triggers[i % len(triggers)]
        stamped = stamp(x[j : j + 1].float().div(255), mask, pattern)
        out[j] = stamped.mul(255).round().clamp(0, 255).to(torch.uint8)[0]
    return out, chosen


class NeuralCleanse(Defense):
    """Args: `clean_fraction` (the trusted clean subset); reverse engineering: `steps`,
    `samples_per_step`, `batch_size`, `lr`, `betas`, `init_cost`, `cost_multiplier`, `patience`,
    `attack_succ_threshold`, `early_stop`, `early_stop_threshold`, `early_stop_patience`;
    detection: `anomaly_threshold`; unlearning: `unlearn_share`, `unlearn_epochs`,
    `unlearn_batch_size`, `unlearn_optimizer`."""

    needs_clean = True

    def __init__(
        self,
        name: str = "nc",
        steps: int = 1000,
        samples_per_step: int = 1000,
        batch_size: int = 32,
        lr: float = 0.1,
        betas: tuple[float, float] = (0.5, 0.9),
        init_cost: float = 1e-3,
        cost_multiplier: float = 1.5,
        patience: int = 10,
        attack_succ_threshold: float = 0.99,
        early_stop: bool = True,
        early_stop_threshold: float = 0.99,
        early_stop_patience: int = 20,
        anomaly_threshold: float = 2.0,
        unlearn_share: float = 0.2,
        unlearn_epochs: int = 100,
        unlearn_batch_size: int = 256,
        unlearn_optimizer: dict | None = None,
        **kw,
    ):
        super().__init__(name=name, **kw)
        for key, value in {"steps": steps, "samples_per_step": samples_per_step, "batch_size": batch_size}.items():
            if int(value) < 1:
                raise ConfigError(f"defense.{key}={value} must be an integer >= 1")
        for key, value in {"patience": patience, "early_stop_patience": early_stop_patience}.items():
            if int(value) < 1:
                raise ConfigError(f"defense.{key}={value} must be an integer >= 1")
        if not float(lr) > 0 or not float(init_cost) > 0:
            raise ConfigError(f"defense.lr={lr} and defense.init_cost={init_cost} must be > 0")
        if len(betas) != 2 or not all(0 <= float(b) < 1 for b in betas):
            raise ConfigError(f"defense.betas={list(betas)} must be Adam's two betas in [0, 1)")
        if not float(cost_multiplier) > 1:
            raise ConfigError(f"defense.cost_multiplier={cost_multiplier} must be > 1")
        if not 0 < float(attack_succ_threshold) <= 1:
            raise ConfigError(f"defense.attack_succ_threshold={attack_succ_threshold} must be a rate in (0, 1]")
        if not float(anomaly_threshold) > 0:
            raise ConfigError(f"defense.anomaly_threshold={anomaly_threshold} must be > 0")
        if not 0 < float(unlearn_share) <= 1:
            raise ConfigError(f"defense.unlearn_share={unlearn_share} must be a share in (0, 1]")
        self.steps, self.samples_per_step, self.batch_size = int(steps), int(samples_per_step), int(batch_size)
        self.lr, self.betas = float(lr), (float(betas[0]), float(betas[1]))
        self.schedule = dict(
            init_cost=float(init_cost),
            multiplier=float(cost_multiplier),
            patience=int(patience),
            early_stop=bool(early_stop),
            early_stop_threshold=float(early_stop_threshold),
            early_stop_patience=int(early_stop_patience),
        )
        self.threshold, self.anomaly_threshold = float(attack_succ_threshold), float(anomaly_threshold)
        self.unlearn_share = float(unlearn_share)
        self.unlearn = recipe(
            unlearn_epochs, unlearn_batch_size, unlearn_optimizer or {"name": "sgd", "lr": 0.01}, prefix="unlearn_"
        )

    def run(self, ctx: DefenseContext) -> Outcome:
        model = copy.deepcopy(ctx.backdoored_model()).eval().requires_grad_(False).to(ctx.device)
        clean = ctx.clean
        steps = ctx.stage_length(self.steps)
        batches = ctx.stage_length(max(1, self.samples_per_step // self.batch_size), "steps")
        log.info(
            "nc: reverse-engineering a trigger for each of %d classes on %d clean samples (at most %d steps of %d batches)",
            clean.num_classes,
            len(clean),
            steps,
            batches,
        )
        found = []
        for t in range(clean.num_classes):
            r = reverse_engineer(
                model,
                clean.x,
                t,
                CostSchedule(**self.schedule),
                steps=steps,
                batches_per_step=batches,
                batch_size=self.batch_size,
                lr=self.lr,
                betas=self.betas,
                threshold=self.threshold,
                seed=ctx.seed + t,
                device=ctx.device,
            )
            log.info(
                "nc: class %d: mask L1 norm %.2f, attack success %.3f, %d steps", t, r["norm"], r["success"], r["steps"]
            )
            found.append(r)
        norms = torch.tensor([r["norm"] for r in found])
        index, flagged, median, mad = mad_anomaly(norms, self.anomaly_threshold)
        masks = torch.stack([r["mask"] for r in found])
        patterns = torch.stack([r["pattern"] for r in found])
        ctx.figure("nc_triggers", lambda path: reversed_triggers(masks, patterns, norms, index, flagged, path))
        extra = {
            "anomaly_index": [round(float(a), 4) for a in index],
            "mask_norms": [round(float(n), 4) for n in norms],
            "flagged": flagged,
            "median_norm": round(median, 4),
            "mad": round(mad, 4),
            "attack_success": [round(r["success"], 4) for r in found],
            "steps": [r["steps"] for r in found],
            "n_clean": len(clean),
        }
        model.requires_grad_(True).train()  # Lightning keeps the modules' modes: back to training mode
        if not flagged:
            log.info(
                "nc: no class flagged (largest anomaly index %.2f): the backdoored model is returned unchanged",
                float(index.max()),
            )
            return Outcome(model=ctx.backdoored_model(), extra={**extra, "mitigated": False})
        x, stamped = unlearning_set(clean.x, [(masks[c], patterns[c]) for c in flagged], self.unlearn_share, ctx.seed)
        log.info(
            "nc: flagged classes %s; unlearning on %d clean samples, %d stamped with their reversed triggers",
            flagged,
            len(clean),
            len(stamped),
        )
        u = self.unlearn
        ctx.finetune(
            model, "nc_unlearn", u.epochs, data=clean.replace(x=x), optimizer=u.optimizer, batch_size=u.batch_size
        )
        return Outcome(model=model.cpu(), extra={**extra, "mitigated": True, "n_stamped": len(stamped)})
