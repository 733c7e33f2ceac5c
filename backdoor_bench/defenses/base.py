"""The defense interface: `Defense.run(ctx) -> Outcome`.

The context holds what a defender may see: the poisoned training set (images and given labels
only; the ground-truth poison mask stays with the evaluator), a small trusted clean set for
defenses that declare `needs_clean`, and shared, cached mechanics (the backdoored model,
supervised training, retraining on a cleansed set).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from backdoor_bench.data import ImageSet

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    """A defense's judgement of the training samples.

    `kept`: bool [N], samples kept for training. `labels`: int64 [N] or None, the labels to train
    the kept samples with (None: the given labels). `scores`: float [N] or None, higher = more
    suspicious. `trusted`: bool [N] or None, the samples the defense judged surely clean (e.g.
    seed 001's clean split), whose purity the evaluator reports.
    """

    kept: torch.Tensor
    labels: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    trusted: torch.Tensor | None = None

    def __post_init__(self):
        self.trusted = self.trusted.bool().cpu() if self.trusted is not None else None
        self.kept = self.kept.bool().cpu()
        self.labels = self.labels.long().cpu() if self.labels is not None else None
        self.scores = self.scores.float().cpu() if self.scores is not None else None

    def cleansed(self, train: ImageSet) -> ImageSet:
        """The training set a cleansing defense retrains on: kept samples, with their new labels."""
        y = train.y if self.labels is None else self.labels
        return train.replace(y=y).subset(self.kept.nonzero().flatten())


@dataclass
class Outcome:
    """The final model and, for defenses that judge samples, their `Verdict`."""

    model: torch.nn.Module
    verdict: Verdict | None = None
    extra: dict = field(default_factory=dict)  # JSON-able figures a defense wants in results.json


@dataclass
class DefenseContext:
    """What a defense gets. Built by the pipeline; see the module docstring."""

    train: ImageSet
    train_model: Callable[..., torch.nn.Module]  # (data, name, cache_spec=None, loss="ce") -> trained model
    backdoored_model: Callable[[], torch.nn.Module]
    fit: Callable[..., object]  # (module, data, name, max_epochs=None, augment=True) -> module
    clean: ImageSet | None = None
    seed: int = 0
    out_dir: Path = Path(".")
    ssl_backbone: Callable[..., torch.nn.Module] | None = None  # (ssl_cfg=None) -> SimCLR-trained model
    device: torch.device = torch.device("cpu")  # where defenses score or embed samples
    augment: Callable | None = None  # the dataset's training augmentation (uint8 batch, generator)
    # a stage's epochs (or steps) under the trainer caps: (n, kind="epochs", min_steps=0, steps_per_epoch=1)
    stage_length: Callable[..., int] = lambda n, kind="epochs", **kw: int(n)
    channels_last: bool = False
    stage_checkpoint: Callable[[str], Path | None] = lambda stage: None  # resumable per-epoch checkpoint path
    new_model: Callable[[], torch.nn.Module] | None = None  # a fresh, untrained `cfg.model`
    # (kind, spec, build) -> build()'s dict of tensors, cached by `spec` plus the data, model and seed
    # (artifacts several defenses share, e.g. seed 001's sample split)
    cached: Callable[[str, dict, Callable[[], dict]], dict] = lambda kind, spec, build: build()

    def retrain(self, verdict: Verdict) -> torch.nn.Module:
        """The shared last step of every cleansing defense: train a fresh model on the kept samples.
        A verdict that changes nothing gets the (cached) model trained on the whole set: the same
        recipe on the same data."""
        if verdict.kept.all() and (verdict.labels is None or torch.equal(verdict.labels, self.train.y.cpu())):
            log.info("the verdict keeps every sample as it is: the backdoored model is the retrained one")
            return self.backdoored_model()
        data = verdict.cleansed(self.train)
        log.info("retraining on the cleansed set: %d of %d samples kept", len(data), len(self.train))
        return self.train_model(data, name="retrain")

    def stage_epochs(
        self, epochs: int, n_samples: int, batch_size: int, min_steps: int = 0, drop_last: bool = False
    ) -> int:
        """A stage's epochs over `n_samples` at `batch_size`: at least `min_steps` optimizer steps
        (see `training.fit.stage_length`), capped by the trainer."""
        from backdoor_bench.training.fit import steps_per_epoch

        return self.stage_length(
            epochs, min_steps=min_steps, steps_per_epoch=steps_per_epoch(n_samples, batch_size, drop_last)
        )


class Defense:
    """Base class. `needs_clean`: the defense uses `ctx.clean` (set `defense.clean_fraction`).
    `label`: how reports name this configuration (e.g. a grid point of an ablation); default the name."""

    needs_clean = False

    def __init__(self, name: str, clean_fraction: float = 0.0, label: str | None = None):
        self.name, self.clean_fraction, self.label = name, float(clean_fraction), label

    def run(self, ctx: DefenseContext) -> Outcome:
        raise NotImplementedError
