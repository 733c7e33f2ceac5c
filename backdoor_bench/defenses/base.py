"""The defense interface: `Defense.run(ctx) -> Outcome`.

The context holds what a defender may see: the poisoned training set (images and given labels
only; the ground-truth poison mask stays with the evaluator), a small trusted clean set for
defenses that declare `needs_clean`, and shared, cached mechanics (the backdoored model,
supervised training, retraining on a cleansed set).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
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
    suspicious.
    """

    kept: torch.Tensor
    labels: torch.Tensor | None = None
    scores: torch.Tensor | None = None

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
    train_model: Callable[..., torch.nn.Module]  # (data, name, cache_spec=None) -> trained model
    backdoored_model: Callable[[], torch.nn.Module]
    clean: ImageSet | None = None
    seed: int = 0
    out_dir: Path = Path(".")
    timings: dict = field(default_factory=dict)

    @contextmanager
    def timer(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0

    def retrain(self, verdict: Verdict) -> torch.nn.Module:
        """The shared last step of every cleansing defense: train a fresh model on the kept samples."""
        data = verdict.cleansed(self.train)
        log.info("retraining on the cleansed set: %d of %d samples kept", len(data), len(self.train))
        return self.train_model(data, name="retrain")


class Defense:
    """Base class. `needs_clean`: the defense uses `ctx.clean` (set `defense.clean_fraction`)."""

    needs_clean = False

    def __init__(self, name: str, clean_fraction: float = 0.0):
        self.name, self.clean_fraction = name, float(clean_fraction)

    def run(self, ctx: DefenseContext) -> Outcome:
        raise NotImplementedError
