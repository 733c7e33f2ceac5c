"""The attack interface and the poisoning mechanics every attack shares.

An attack defines its trigger (`apply`, on uint8 images) and, where it differs, the training
trigger (`stamp`), which samples may be poisoned (`eligible`) and cover samples (`stamp_cover`:
trigger-like images that keep their label, WaNet's noise mode and Adap-*). The base class chooses
the exact number of samples, stamps them before any augmentation, relabels them, and records the
ground truth that only the evaluator sees. Attacks that train something (a surrogate model, an
encoder) get `AttackTools` through `bind` and cache what they build. Attacks that control the
training of the backdoored model (`trains_batches`: WaNet's train mode, Blind) transform each of
its training batches on the device (`train_batch`), as well as or instead of poisoning the stored
set. Attacks that train the
backdoored model themselves (`trains_model`, attacks/trained.py) hand the runner their classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from backdoor_bench.data import ImageSet
from backdoor_bench.errors import ConfigError

LABEL_MODES = ("all2one", "all2all")


@dataclass
class PoisonedSet:
    """The training set after poisoning. `train` is what the defender sees (images, given labels);
    `poisoned`, `y_true` and `cover` are ground truth, kept by the evaluator."""

    train: ImageSet
    poisoned: torch.Tensor  # bool [N]
    y_true: torch.Tensor  # int64 [N], the labels before poisoning
    cover: torch.Tensor  # bool [N], samples carrying a trigger but keeping their label (Adap-*)

    @property
    def indices(self) -> torch.Tensor:
        return self.poisoned.nonzero().flatten()

    def to_payload(self) -> dict:
        return {"train": self.train.to_payload(), "poisoned": self.poisoned, "y_true": self.y_true, "cover": self.cover}

    @classmethod
    def from_payload(cls, d: dict) -> PoisonedSet:
        return cls(ImageSet.from_payload(d["train"]), d["poisoned"], d["y_true"], d["cover"])


@dataclass
class TrainBatch:
    """A training batch as a training-controlled attack hands it to the loss: `x` float images in
    [0, 1] (the model's input, after the dataset's augmentation), `y` labels, and `combine`, how
    the per-sample losses `[len(y)]` become the step's loss (None: their mean)."""

    x: torch.Tensor
    y: torch.Tensor
    combine: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class AttackTools:
    """What the pipeline lends an attack that trains something (TrojanNN, LC, SSBA).

    `clean`: the clean training set (before poisoning). `clean_model(epochs)`: the run's model
    trained on it (cached and shared by every attack and sweep point with the same spec).
    `fit(module, data, name, max_epochs, augment)`: trains any Lightning module with the run's
    trainer. `cached(kind, spec, build)`: a payload built once per spec (the spec gains the data
    fingerprint and seed). `spec`: what besides the attack config determines its artifacts.
    `stage_length(n, kind)`: `n` epochs (`kind="epochs"`) or optimisation steps (`"steps"`) under
    the trainer's stage caps (`trainer.max_stage_epochs` / `max_stage_steps`; `trainer=tiny`: 2).
    """

    clean: ImageSet
    clean_model: Callable[[int | None], torch.nn.Module]
    fit: Callable
    cached: Callable[[str, dict, Callable[[], dict]], dict]
    device: torch.device
    seed: int
    spec: dict
    stage_length: Callable[..., int]


class Attack:
    """Base attack: all2one or all2all relabeling of a random `poison_rate` share of the training set.

    Args:
        name: the config name (reports group by it).
        target: the target class for all2one.
        label_mode: `all2one` (every poisoned sample to `target`) or `all2all` (y to (y+1) mod C).
        poison_rate: poisoned samples as a fraction of the whole training set (BackdoorBench's
            convention), or of the eligible samples where the class says `rate_of = "eligible"`
            (clean-label attacks: the target class; dirty_label: the source class).
        poison_count: an exact number of poisoned samples; overrides `poison_rate`.
        num_classes: the dataset's class count (the pipeline passes it; all2all needs it).
    """

    clean_label = False  # clean-label attacks never change a label
    rate_of = "dataset"  # poison_rate is a fraction of the "dataset" or of the "eligible" samples
    needs_tools = False  # trains something: the pipeline calls `bind(tools)` before use
    trains_batches = False  # transforms the backdoored model's training batches (`train_batch`)
    trains_model = False  # trains the backdoored model itself (IAD, LIRA): see attacks/trained.py
    test_only: tuple[str, ...] = ("name",)  # config keys that do not change the poisoned training set

    def __init__(
        self,
        name: str,
        target: int = 0,
        label_mode: str = "all2one",
        poison_rate: float = 0.1,
        poison_count: int | None = None,
        num_classes: int | None = None,
    ):
        self.name, self.target, self.label_mode = name, int(target), label_mode
        self.num_classes = num_classes
        self.poison_rate, self.poison_count = poison_rate, poison_count
        self.tools: AttackTools | None = None
        self.assets: dict = {}  # config keys that named an asset: {key: {asset, path or "stand-in"}}
        if label_mode not in LABEL_MODES:
            raise ConfigError(f"attack.label_mode={label_mode!r} is unknown: use one of {', '.join(LABEL_MODES)}")
        if not 0.0 <= float(poison_rate) <= 1.0:
            raise ConfigError(f"attack.poison_rate={poison_rate} is out of range: use a fraction in [0, 1]")
        if poison_count is not None and int(poison_count) < 0:
            raise ConfigError(f"attack.poison_count={poison_count} is negative: use a count >= 0 or null")
        if self.clean_label and label_mode != "all2one":
            raise ConfigError(f"attack={name} is clean-label and only supports attack.label_mode=all2one")

    # -- the parts an attack defines -------------------------------------------------------------
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The test-time trigger on uint8 images `[N, C, H, W]`."""
        raise NotImplementedError

    def stamp(self, x: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The training-time trigger on the chosen samples (by default the test trigger)."""
        return self.apply(x)

    def n_cover(self, n_poison: int, n_train: int) -> int:
        """How many cover samples (trigger-like, label kept) to add; none by default."""
        return 0

    def stamp_cover(self, x: torch.Tensor, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The cover samples' images."""
        raise NotImplementedError

    def train_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> TrainBatch:
        """Attacks with `trains_batches`: one training batch of the backdoored model (float images
        in [0, 1] after augmentation, on the training device) as the model should learn from it.
        Runs inside the training step: device-side work only, no host sync; `generator` is a
        seeded generator on the batch's device."""
        raise NotImplementedError

    def batch_counts(self, batch_size: int) -> dict:
        """Attacks with `trains_batches`: how many samples of a full training batch of `batch_size`
        it poisons and covers (`results.json`'s `data.per_batch`)."""
        raise NotImplementedError

    def eligible(self, y: torch.Tensor) -> torch.Tensor:
        """Which training samples may be poisoned (all; clean-label attacks: the target class)."""
        return (y == self.target) if self.clean_label else torch.ones_like(y, dtype=torch.bool)

    def check(self, num_classes: int, shape: tuple[int, int, int]) -> None:
        """Validate against the dataset before any work; raise ConfigError naming the key."""
        if self.label_mode == "all2one" and not 0 <= self.target < num_classes:
            raise ConfigError(f"attack.target={self.target} is not a class: use 0..{num_classes - 1}")

    def poison_spec(self, cfg: dict) -> dict:
        """What determines the poisoned training set (its cache key): the config without test-only keys."""
        return {k: v for k, v in cfg.items() if k not in self.test_only}

    def extra_metrics(self, pred_clean: torch.Tensor, pred_triggered: torch.Tensor, y: torch.Tensor) -> dict:
        """Metrics beyond ACC/ASR/RA that this attack's papers report (dirty_label: `tmr`)."""
        return {}

    def bind(self, tools: AttackTools) -> None:
        """Receive the pipeline's tools (attacks with `needs_tools`)."""
        self.tools = tools

    def require_tools(self) -> AttackTools:
        if self.tools is None:
            raise RuntimeError(f"attack={self.name} trains an artifact: call attack.bind(tools) first")
        return self.tools

    # -- shared mechanics ------------------------------------------------------------------------
    def target_label(self, y: torch.Tensor) -> torch.Tensor:
        """The label a triggered image should get: `target`, or (y + 1) mod C for all2all."""
        if self.label_mode == "all2all":
            return (y + 1) % self.num_classes
        return torch.full_like(y, self.target)

    def asr_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Test images that enter ASR and RA: non-target images (all2one), all images (all2all)."""
        if self.label_mode == "all2all":
            return torch.ones_like(y, dtype=torch.bool)
        return y != self.target

    def n_poison(self, n_train: int, n_eligible: int | None = None) -> int:
        if self.poison_count is not None:
            return int(self.poison_count)
        base = n_eligible if self.rate_of == "eligible" and n_eligible is not None else n_train
        return int(round(self.poison_rate * base))

    def poison(self, train: ImageSet, seed: int) -> PoisonedSet:
        """Choose exactly `n_poison` eligible samples (seeded), stamp and relabel them; then the
        cover samples, if any, from the rest (stamped with `stamp_cover`, labels kept)."""
        self.num_classes = self.num_classes or train.num_classes
        g = torch.Generator().manual_seed(seed)
        candidates = self.eligible(train.y).nonzero().flatten()
        n = self.n_poison(len(train), len(candidates))
        if n > len(candidates):
            raise ConfigError(
                f"attack.poison_rate asks for {n} poisoned samples but only {len(candidates)} are eligible "
                f"for attack={self.name}: lower attack.poison_rate or attack.poison_count"
            )
        index = candidates[torch.randperm(len(candidates), generator=g)[:n]].sort().values
        x, y = train.x.clone(), train.y.clone()
        if n:
            x[index] = self.stamp(train.x[index], index, g)
            if not self.clean_label:
                y[index] = self.target_label(train.y[index])
        poisoned = torch.zeros(len(train), dtype=torch.bool)
        poisoned[index] = True
        cover = torch.zeros_like(poisoned)
        n_cover = self.n_cover(n, len(train))
        if n_cover:
            rest = (~poisoned).nonzero().flatten()
            if n_cover > len(rest):
                raise ConfigError(
                    f"attack={self.name} asks for {n_cover} cover samples but only {len(rest)} "
                    "samples are not poisoned: lower the cover rate"
                )
            cidx = rest[torch.randperm(len(rest), generator=g)[:n_cover]].sort().values
            x[cidx] = self.stamp_cover(train.x[cidx], cidx, g)
            cover[cidx] = True
        return PoisonedSet(train.replace(x=x, y=y), poisoned, train.y.clone(), cover)


MODES = ("poison", "train")


def per_batch_poisoned(rate: float, batch_size: int, generator: torch.Generator | None = None, device=None):
    """Poisoned samples in a training batch as BackdoorBench's training-time attacks count them
    (`generalize_to_lower_pratio`, then `int`): int(rate x batch) when that is at least one, else
    one with probability rate x batch (a 0-dim tensor drawn on `device`: no host sync)."""
    expected = rate * batch_size
    if expected >= 1:
        return int(expected)
    return (torch.rand((), generator=generator, device=device) < expected).long()


class BatchPoisoning(Attack):
    """An attack with two modes (`mode`): `poison` (the base class's poisoned stored set) or `train`
    (BackdoorBench's training-time form of WaNet and BppAttack): the stored set stays clean and each
    training batch of the backdoored model is poisoned on the device: its first
    `per_batch_poisoned(poison_rate, batch)` samples get `batch_trigger` and the target label, the
    next `n_extra` get `batch_extra` and keep their label (WaNet's noise samples, BppAttack's
    negative samples). Batches are shuffled, so the poisoned samples change every epoch."""

    def __init__(self, mode: str = "poison", **kw):
        super().__init__(**kw)
        if mode not in MODES:
            raise ConfigError(f"attack.mode={mode!r} is unknown: use one of {', '.join(MODES)}")
        if mode == "train" and self.poison_count is not None:
            raise ConfigError(
                "attack.poison_count is for attack.mode=poison: mode=train poisons poison_rate of each batch"
            )
        self.mode, self.trains_batches = mode, mode == "train"

    def n_poison(self, n_train, n_eligible=None):
        return 0 if self.trains_batches else super().n_poison(n_train, n_eligible)

    def poison_spec(self, cfg):
        """`mode: poison` (the default) stays out of the spec: the poisoned sets cached before the
        mode existed keep their keys."""
        spec = super().poison_spec(cfg)
        if spec.get("mode") == "poison":
            spec.pop("mode")
        return spec

    def n_extra(self, n_poisoned, batch_size: int):
        """Label-keeping samples after the poisoned ones in a batch (an int, or a 0-dim tensor)."""
        return 0

    def batch_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """The trigger on float images in [0, 1] (every sample of the batch)."""
        raise NotImplementedError

    def batch_extra(self, x: torch.Tensor, triggered: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The label-keeping samples' images (every sample of the batch; `triggered` is
        `batch_trigger(x)`)."""
        raise NotImplementedError

    def per_batch(self, batch_size: int, generator: torch.Generator | None = None, device=None):
        """(poisoned, extra) samples of a batch of `batch_size`."""
        n = per_batch_poisoned(self.poison_rate, batch_size, generator, device)
        return n, self.n_extra(n, batch_size)

    def batch_counts(self, batch_size):
        expected = self.poison_rate * batch_size
        if expected < 1:
            return {"batch_size": batch_size, "poisoned": f"1 with probability {expected:g}", "cover": None}
        n, extra = self.per_batch(batch_size)
        return {"batch_size": batch_size, "poisoned": n, "cover": extra}

    def train_batch(self, x, y, generator):
        n_bd, n_extra = self.per_batch(len(y), generator, x.device)
        pos = torch.arange(len(y), device=x.device)
        bd, extra = pos < n_bd, (pos >= n_bd) & (pos < n_bd + n_extra)
        triggered = self.batch_trigger(x)
        out = torch.where(extra[:, None, None, None], self.batch_extra(x, triggered, generator), x)
        return TrainBatch(
            torch.where(bd[:, None, None, None], triggered, out), torch.where(bd, self.target_label(y), y)
        )
