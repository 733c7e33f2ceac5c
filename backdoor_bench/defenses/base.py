"""The defense interface: `Defense.run(ctx) -> Outcome`.

The context holds what a defender may see: the poisoned training set (images and given labels
only; the ground-truth poison mask stays with the evaluator), a small trusted clean set for
defenses that declare `needs_clean`, and shared, cached mechanics (the backdoored model,
supervised training, retraining on a cleansed set).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch

from backdoor_bench.data import ImageSet
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.optim import run_optimizer
from backdoor_bench.training.supervised import Supervised

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    """A defense's judgement of the training samples.

    `kept`: bool [N], samples kept for training. `labels`: int64 [N] or None, the labels to train
    the kept samples with (None: the given labels). `scores`: float [N] or None, higher = more
    suspicious. `trusted`: bool [N] or None, the samples the defense judged surely clean (e.g.
    the clean split of D-ST/D-BR's SD module), whose purity the evaluator reports.
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
    """The final model and, for defenses that judge samples, their `Verdict`.

    `input_transform`: a uint8 -> uint8 batch transformation applied to every input the model is
    fed from then on (a test-time defense, e.g. ShrinkPad). `input_detector`: an object with
    `scores(x)` (higher = more suspicious) and `threshold` that screens test inputs (e.g. STRIP);
    the evaluator reports it in its own `input_detection` section."""

    model: torch.nn.Module
    verdict: Verdict | None = None
    extra: dict = field(default_factory=dict)  # JSON-able figures a defense wants in results.json
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    input_detector: object | None = None


def no_augmentation(x: torch.Tensor, generator=None) -> torch.Tensor:
    """The augmentation of a dataset that has none: the batch as it is."""
    return x


class DefenseContext:
    """What a defense gets: the poisoned training set (images and given labels only), the
    trusted clean subset when the defense declares `needs_clean`, and the run's shared, cached
    mechanics through the methods below. It holds no path into the cache or the run folder: stage
    state goes through `stage_state` handles, figures through `figure`.

    Attributes: `train` (the poisoned training set), `clean` (ImageSet or None), `seed`, `device`
    (where to score or embed samples), `augment` (the dataset's batched training augmentation,
    `augment(uint8 batch, generator)`; the identity for a dataset without one), `channels_last`
    (for Lightning modules).
    """

    def __init__(self, runner, train: ImageSet, clean: ImageSet | None = None, out_dir: Path | None = None):
        self.train, self.clean = train, clean
        self.seed, self.device = runner.seed, runner.device
        self.augment = runner.augment if runner.augment is not None else no_augmentation
        self.channels_last = runner.channels_last
        self._runner, self._out_dir = runner, out_dir

    # -- models ---------------------------------------------------------------------------------
    def backdoored_model(self) -> torch.nn.Module:
        """The model of standard training on `train` (cached; what no defense gives), or the
        model an attack that controls training delivered (IAD, LIRA). Copy it before changing it."""
        return self._runner.backdoored_model(self.train)

    def new_model(self, seed: int | None = None, architecture: dict | None = None, **model) -> torch.nn.Module:
        """A fresh, untrained model of the run's architecture, initialised from `seed` (default:
        the run's seed); `architecture` (a model config with its `_target_`) replaces the run's
        (D-ST / D-BR's sensitivity model); `model` overrides keys (DP-SGD: `norm="group"`)."""
        return self._runner.new_model(self.train, seed, architecture, **model)

    def train_model(self, data: ImageSet, name: str, epochs: int | None = None) -> torch.nn.Module:
        """A fresh model trained on `data` with the run's standard recipe (not cached)."""
        return self._runner.train_model(data, name, epochs=epochs)

    def ssl_backbone(self) -> torch.nn.Module:
        """A fresh model whose backbone SimCLR trained on the unlabeled `train` (`cfg.ssl`;
        cached and shared by every defense of the same poisoned set); the head is untrained; the
        projector is `model.ssl_projector`."""
        return self._runner.ssl_backbone(self.train)

    def retrain(self, verdict: Verdict) -> torch.nn.Module:
        """The shared last step of every cleansing defense: train a fresh model on the kept samples.
        A verdict that changes nothing gets the (cached) model of standard training on the whole
        set: the same recipe on the same data (the backdoored model, unless the attack controlled
        its training)."""
        if verdict.kept.all() and (verdict.labels is None or torch.equal(verdict.labels, self.train.y.cpu())):
            log.info(
                "the verdict keeps every sample as it is: the standard model of the whole set is the retrained one"
            )
            return self._runner.standard_model(self.train)
        data = verdict.cleansed(self.train)
        log.info("retraining on the cleansed set: %d of %d samples kept", len(data), len(self.train))
        return self.train_model(data, "retrain")

    def finetune(
        self,
        model: torch.nn.Module,
        name: str,
        epochs: int,
        *,
        data: ImageSet | None = None,
        optimizer: dict | None = None,
        batch_size: int | None = None,
        loss: str = "ce",
    ) -> torch.nn.Module:
        """Fine-tune `model` in place with `loss` on `data` (default: the trusted clean subset) and
        the dataset's augmentation, for `epochs` under the stage caps (timed as `train/<name>`);
        `optimizer`: a config like `trainer.optimizer` (default: the trainer's). Returns `model`."""
        data = self.clean if data is None else data
        if data is None:
            raise RuntimeError(f"{name}: fine-tuning needs the trusted clean subset: set needs_clean = True")
        epochs = self.stage_length(epochs)
        optim = dict(optimizer) if optimizer is not None else run_optimizer(self._runner.cfg.trainer, batch_size)
        module = Supervised(model, optim, epochs, loss=loss, channels_last=self.channels_last, log_prefix=name)
        self.fit(name, module, data, epochs, batch_size=batch_size)
        return model

    # -- stages ---------------------------------------------------------------------------------
    def stage_length(self, n: int, kind: str = "epochs") -> int:
        """A stage's `n` epochs (or, `kind="steps"`, steps per epoch) under the trainer caps."""
        return self._runner.stage_length(n, kind)

    def stage_epochs(
        self, epochs: int, n_samples: int, batch_size: int, min_steps: int = 0, drop_last: bool = False
    ) -> int:
        """A stage's epochs over `n_samples` at `batch_size`: at least `min_steps` optimizer steps
        (see `training.fit.stage_length`), capped by the trainer."""
        return self._runner.stage_epochs(epochs, n_samples, batch_size, min_steps, drop_last)

    def fit(
        self,
        name: str,
        module: pl.LightningModule,
        data: ImageSet,
        epochs: int,
        *,
        resumable: bool = False,
        augment: bool = True,
        batch_size: int | None = None,
        extras: dict | None = None,
        loader: Callable | None = None,
    ) -> pl.LightningModule:
        """Train one stage: `module` on `data` for `epochs` with the run's trainer (timed as
        `train/<name>`). `augment`: the dataset's augmentation on each batch; `batch_size`: the
        stage's (default the trainer's); `extras`: per-sample tensors batched beside x and y;
        `loader(device)`: builds the batches instead (MixMatch, unlearning phases). `resumable`:
        a per-epoch checkpoint that a rerun of an interrupted run resumes from, removed once the
        stage has finished."""
        return self._runner.stage(
            name,
            module,
            data,
            epochs,
            resumable=resumable,
            augment=augment,
            batch_size=batch_size,
            extras=extras,
            loader=loader,
        )

    def stage_state(self, name: str):
        """A handle (`load(default, check)`, `save(obj)`, `clear()`) on stage `name`'s own resumable state,
        for stages that are not one Lightning fit (e.g. ISPL's finished components)."""
        return self._runner.stage_state(name, self.train)

    def cached(self, name: str, spec: dict, build: Callable[[], dict]) -> dict:
        """`build()`'s dict of tensors, built once per `spec` (plus the data, model, training recipe,
        SSL config and seed): artifacts several defenses share, e.g. the SD module's split."""
        return self._runner.cached("defense_artifact", build, data=self.train, artifact=name, spec=spec)

    def figure(self, name: str, draw: Callable[[Path], object]) -> None:
        """Save a figure as `<name>.png` in the run folder: `draw(path)` writes it to a scratch file
        that is then moved there. A figure never costs a result: a failure is logged."""
        if self._out_dir is None:
            return
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{name}.png"
                draw(path)
                Path(self._out_dir).mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), Path(self._out_dir) / path.name)
        except Exception as e:
            log.warning("could not draw %s: %s", name, e)


def trusted_clean_subset(clean_train: ImageSet, untouched: torch.Tensor, fraction: float, seed: int) -> ImageSet:
    """The trusted clean data a defense with `needs_clean` gets: `round(fraction x N)` samples drawn
    (seed + 1) from the training samples the attack left alone (`untouched`: neither poisoned nor
    cover samples, whose clean originals would reveal the trigger), as their original images."""
    pool = untouched.nonzero().flatten()
    n = int(round(fraction * len(clean_train)))
    if n < 1:
        raise ConfigError(f"defense.clean_fraction={fraction} gives no clean sample: this defense needs a few")
    if n > len(pool):
        raise ConfigError(
            f"defense.clean_fraction={fraction} asks for {n} clean samples but only {len(pool)} "
            f"were left untouched by the attack: lower it to at most {len(pool) / len(clean_train):.3f}"
        )
    g = torch.Generator().manual_seed(seed + 1)
    return clean_train.subset(pool[torch.randperm(len(pool), generator=g)[:n]].sort().values)


class Defense:
    """Base class. `needs_clean`: the defense uses `ctx.clean` (set `defense.clean_fraction`).
    `label`: how reports name this configuration (e.g. a grid point of an ablation); default the name."""

    needs_clean = False

    def __init__(self, name: str, clean_fraction: float = 0.0, label: str | None = None):
        self.name, self.clean_fraction, self.label = name, float(clean_fraction), label

    def run(self, ctx: DefenseContext) -> Outcome:
        raise NotImplementedError
