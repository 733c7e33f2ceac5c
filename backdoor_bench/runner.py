"""`Runner`: what one run shares, and the training mechanics attacks and defenses borrow.

A run's config, artifact cache, seed, devices, logger and stage timings live here, with the
operations built on them: load the dataset, train a model (cached or not), the SimCLR backbone,
fit any Lightning module, run a defense stage (resumable), cache an artifact. `pipeline.run`
builds one per run. A defense sees it only through `DefenseContext` (defenses/base.py), an
attack that trains through `AttackTools` (attacks/base.py).

Cache keys: every artifact kind declares its dependencies once (`cache.ARTIFACTS`);
`Runner.spec(kind, **given)` fills those that come from the config (`CONFIG_DEPENDENCIES`) and
takes the rest (the data, a stage name, ...) from the caller.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from backdoor_bench.attacks.base import AttackTools
from backdoor_bench.cache import ArtifactCache, artifact_spec, atomic_torch_save, load_checkpoint
from backdoor_bench.data.augment import SimCLRViews
from backdoor_bench.data.imageset import ImageSet, load_dataset, random_subset
from backdoor_bench.data.loader import DeviceLoader
from backdoor_bench.models import build_model
from backdoor_bench.training.fit import augmentation, eval_device, fit, stage_length, steps_per_epoch, training_spec
from backdoor_bench.training.optim import run_optimizer
from backdoor_bench.training.simclr import SimCLR, projector
from backdoor_bench.training.supervised import Supervised

log = logging.getLogger(__name__)


def plain(node):
    """A config node as plain Python (for cache keys and JSON); other values unchanged."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _ssl_epochs(cfg) -> int:
    return stage_length(cfg.trainer, cfg.ssl.epochs)


# The dependencies a run's config determines, by name (`cache.ARTIFACTS` says which kind uses
# which). Everything else in the config (devices, progress bar, logger, output paths, evaluation
# batch size) never enters a key.
CONFIG_DEPENDENCIES: dict[str, Callable] = {
    "source": lambda cfg: plain(cfg.dataset.source),
    "model": lambda cfg: plain(cfg.model),
    "training": lambda cfg: training_spec(cfg.trainer),
    "augment": lambda cfg: plain(cfg.dataset.get("augment")) or None,
    "precision": lambda cfg: str(cfg.trainer.precision),
    "ssl": lambda cfg: plain(cfg.ssl),
    "ssl_epochs": _ssl_epochs,
    "defense": lambda cfg: plain(cfg.defense),
    "caps": lambda cfg: [cfg.trainer.get("max_stage_epochs"), cfg.trainer.get("max_stage_steps")],
    "seed": lambda cfg: int(cfg.seed),
}


def data_identity(data: ImageSet) -> dict:
    """What identifies a dataset in a cache key: its pixels and labels, and its normalisation."""
    return {"fingerprint": data.fingerprint(), "mean": list(data.mean), "std": list(data.std)}


class StageState:
    """An opaque handle on a defense stage's resumable state (e.g. ISPL's finished components):
    `load(default, check)`, `save(obj)`, `clear()`. Where it is stored is the runner's business;
    it is read through `cache.load_checkpoint`, so a broken state is deleted and rebuilt. A state
    that loads is appended to `resumed` (the run's record, for results.json) as
    `{"stage": name, "checkpoint": path}`. Its attributes are private: a defense must not learn
    where the cache lives (the ground-truth test searches every public attribute)."""

    def __init__(self, path: Path | None, name: str = "", resumed: list | None = None):
        self._path, self._name, self._resumed = path, name, resumed

    def load(self, default=None, check=None):
        """The saved state, or `default` when there is none or it is unusable (it does not load, or
        `check(state)` raises)."""
        state = load_checkpoint(self._path, check)
        if state is None:
            return default
        if self._resumed is not None:
            self._resumed.append({"stage": self._name, "checkpoint": str(self._path)})
        return state

    def save(self, obj) -> None:
        if self._path is not None:
            atomic_torch_save(self._path, obj)

    def clear(self) -> None:
        if self._path is not None:
            self._path.unlink(missing_ok=True)


class Runner:
    """One run's shared state and mechanics. `logger`: the Lightning logger (or None)."""

    def __init__(self, cfg, logger=None):
        self.cfg, self.logger = cfg, logger
        self.hidden: tuple[str, ...] = ()  # config groups this runner was built without
        self.trainer_cfg = cfg.trainer
        self.cache = ArtifactCache(cfg.paths.cache_dir, enabled=bool(cfg.cache.enabled))
        self.seed = int(cfg.seed)
        self.device = eval_device(cfg.trainer)  # where scoring, embedding and evaluation run
        self.channels_last = bool(cfg.trainer.channels_last)
        self.augment = augmentation(cfg.dataset)  # the dataset's training augmentation, or None
        self.timings: dict[str, float] = {}
        self.resumed: list[dict] = []  # the trainings and stage states this run resumed, for results.json
        # a training-controlled attack and its config (`control_training`): private, as the cache
        self._batch_attack: tuple[Callable, dict] | None = None
        self._backdoored: torch.nn.Module | None = None  # an attack's own model (`with_backdoored`)

    def without(self, *groups: str) -> Runner:
        """This runner (same cache, logger and timings) over the config less `groups`: what a
        defense's context holds, so the attack's config is not within its reach."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        full = OmegaConf.to_container(self.cfg, resolve=True)
        other.cfg = OmegaConf.create({k: v for k, v in full.items() if k not in groups})
        other.hidden = tuple(groups)
        return other

    # -- bookkeeping --------------------------------------------------------------------------
    @contextmanager
    def timed(self, name: str):
        """Time a block into `timings[name]` (summed over repeats)."""
        t0 = time.perf_counter()
        log.info("stage: %s", name)
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 3)

    def spec(self, kind: str, **given) -> dict:
        """The cache spec of an artifact of `kind`: its declared dependencies, those the config
        determines filled from it, ImageSets given as data replaced by their identity."""
        from backdoor_bench.cache import ARTIFACTS

        deps = {}
        for name in ARTIFACTS[kind]:
            if name in given:
                v = given.pop(name)
                deps[name] = data_identity(v) if isinstance(v, ImageSet) else plain(v)
            elif name in CONFIG_DEPENDENCIES:
                deps[name] = CONFIG_DEPENDENCIES[name](self.cfg)
            else:
                raise KeyError(f"artifact {kind!r} needs {name!r}: pass it")
        if given:
            raise KeyError(f"artifact {kind!r} does not depend on {sorted(given)}: declare it in cache.ARTIFACTS")
        return artifact_spec(kind, deps)

    def cached(self, kind: str, build: Callable[[], dict], **given) -> dict:
        """`build()`'s payload (a dict of tensors and plain values), built once per spec."""
        if not self.cache.enabled:
            return build()
        return self.cache.get_or_build(kind, self.spec(kind, **given), build)

    # -- data -----------------------------------------------------------------------------------
    def load_data(self) -> tuple[ImageSet, ImageSet]:
        """The dataset's (train, test), shrunk to the trainer's subsets; a cacheable source (a
        folder of images) is decoded once, keyed by its config and its files."""
        train, test = load_dataset(
            self.cfg.dataset, lambda build, content: self.cached("dataset", build, content=content)
        )
        t = self.trainer_cfg
        return random_subset(train, t.train_subset, self.seed), random_subset(test, t.test_subset, self.seed)

    # -- training ---------------------------------------------------------------------------------
    def new_model(
        self, data: ImageSet, seed: int | None = None, architecture: dict | None = None, **model
    ) -> torch.nn.Module:
        """A fresh, untrained `cfg.model` for `data`, initialised from `seed` (default: the run's);
        `architecture` (a model config with its `_target_`) replaces `cfg.model`; `model` overrides
        keys of the result (e.g. `norm="group"`)."""
        torch.manual_seed(self.seed if seed is None else seed)
        cfg = OmegaConf.create(dict(architecture)) if architecture else self.cfg.model
        cfg = OmegaConf.merge(cfg, model) if model else cfg
        return build_model(cfg, data.num_classes, data.shape[0], data.mean, data.std)

    def stage_length(self, n: int, kind: str = "epochs", *, min_steps: int = 0, steps_per_epoch: int = 1) -> int:
        """A stage's epochs (or steps per epoch) under the trainer caps; see `training.fit.stage_length`."""
        return stage_length(self.trainer_cfg, n, kind, min_steps=min_steps, steps_per_epoch=steps_per_epoch)

    def stage_epochs(
        self, epochs: int, n_samples: int, batch_size: int, min_steps: int = 0, drop_last: bool = False
    ) -> int:
        """A stage's epochs over `n_samples` at `batch_size`: at least `min_steps` optimizer steps,
        capped by the trainer."""
        return self.stage_length(
            epochs, min_steps=min_steps, steps_per_epoch=steps_per_epoch(n_samples, batch_size, drop_last)
        )

    def fit(
        self,
        module: pl.LightningModule,
        data: ImageSet,
        name: str,
        epochs: int,
        *,
        augment: bool = True,
        batch_size: int | None = None,
        extras: dict | None = None,
        loader: Callable | None = None,
        checkpoint: Path | None = None,
    ) -> pl.LightningModule:
        """Train any Lightning module on `data` for `epochs` with the run's trainer (timed as
        `train/<name>`); `augment`: the dataset's augmentation; `loader(device)`: custom batches."""
        with self.timed(f"train/{name}"):
            return fit(
                module,
                data.x,
                data.y,
                self.trainer_cfg,
                max_epochs=int(epochs),
                augment=self.augment if augment else None,
                seed=self.seed,
                logger=self.logger,
                checkpoint=checkpoint,
                extras=extras,
                batch_size=batch_size,
                loader=loader,
                on_resume=lambda info: self.resumed.append({"stage": f"train/{name}", **info}),
            )

    def stage(
        self,
        name: str,
        module: pl.LightningModule,
        data: ImageSet,
        epochs: int,
        *,
        resumable: bool = False,
        **fit_kw,
    ) -> pl.LightningModule:
        """One training stage of a defense: `fit`, and with `resumable` a per-epoch checkpoint
        keyed by everything that determines the stage, so rerunning an interrupted run resumes
        from its last finished epoch; the checkpoint is removed once the stage has finished."""
        checkpoint = self._stage_path(name, data) if resumable else None
        self.fit(module, data, name, epochs, checkpoint=checkpoint, **fit_kw)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        return module

    def stage_state(self, name: str, data: ImageSet) -> StageState:
        """A handle on stage `name`'s resumable state (nothing is kept with the cache off)."""
        return StageState(self._stage_path(name, data), name, self.resumed)

    def _stage_path(self, name: str, data: ImageSet) -> Path | None:
        if not self.cache.enabled:
            return None
        entry = self.cache.entry("defense_stage", self.spec("defense_stage", data=data, stage=name))
        entry.mkdir(parents=True, exist_ok=True)
        return entry / "partial.ckpt"

    def train_model(
        self,
        data: ImageSet,
        name: str,
        *,
        role: str | None = None,
        loss: str = "ce",
        epochs: int | None = None,
        batch_attack: tuple[Callable, dict] | None = None,
    ) -> torch.nn.Module:
        """Standard supervised training of a fresh `cfg.model` on `data` (the trainer's recipe);
        with `role` (e.g. "backdoored"), cached and resumable, keyed by everything that
        determines the model. `batch_attack`: (a training-controlled attack's `train_batch`, its
        config), which rewrites every training batch; keyed by that config too."""
        epochs = int(epochs or self.trainer_cfg.max_epochs)
        hook = batch_attack[0] if batch_attack is not None else None

        def build(checkpoint: Path | None = None) -> torch.nn.Module:
            model = self.new_model(data)  # the same init whatever was built or loaded before
            optim = run_optimizer(self.trainer_cfg)
            module = Supervised(
                model,
                optim,
                epochs,
                loss=loss,
                channels_last=self.channels_last,
                log_prefix=name,
                batch_attack=hook,
                batch_seed=self.seed,
            )
            self.fit(module, data, name, epochs, checkpoint=checkpoint)
            return model.cpu()

        if role is None:
            return build()
        if hook is None:
            kind, spec = "model", self.spec("model", data=data, role=role, epochs=epochs, loss=loss)
        else:
            kind = "attacked_model"
            spec = self.spec(kind, data=data, role=role, epochs=epochs, loss=loss, batch_attack=batch_attack[1])
        return self.cached_model(kind, spec, build, lambda: self.new_model(data))

    def control_training(self, train_batch: Callable, spec: dict) -> None:
        """Let a training-controlled attack rewrite the backdoored model's training batches
        (`train_batch`, keyed by `spec`): only `backdoored_model`, never a defense's training."""
        self._batch_attack = (train_batch, spec)

    def backdoored_model(self, data: ImageSet) -> torch.nn.Module:
        """What no defense gives: the model of standard training on the (poisoned) `data`, of a
        training-controlled attack's training on it, or the model an attack trained itself
        (`with_backdoored`; a copy per call)."""
        if self._backdoored is not None:
            return copy.deepcopy(self._backdoored)
        return self.train_model(data, "backdoored", role="backdoored", batch_attack=self._batch_attack)

    def standard_model(self, data: ImageSet) -> torch.nn.Module:
        """The model of standard training on `data` (cached): the backdoored model, unless the
        attack controls training, whose model a defender's own training does not reproduce."""
        return self.train_model(data, "backdoored", role="backdoored")

    def with_backdoored(self, model: torch.nn.Module) -> Runner:
        """This runner (same cache, logger and timings) with `model` as its backdoored model: the
        classifier of an attack that trains it itself (IAD, LIRA)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other._backdoored = model
        return other

    def attack_model(self, attack, clean: ImageSet) -> torch.nn.Module:
        """The classifier an attack that controls training (`attack.trains_model`, its tools bound)
        trains on the clean set with its trigger generator (attacks/trained.py): cached as an
        `attack_model` entry keyed by the data, the attack's config with its capped stage lengths,
        the model, the training recipe, the augmentation and the seed, with the generator's state
        dict beside the classifier's; the generator goes to the attack (`use_generator`)."""
        tools = attack.require_tools()
        extras: dict = {"generator": None}

        def build(checkpoint: Path | None = None) -> torch.nn.Module:
            model = self.new_model(clean)
            extras["generator"] = attack.train_model(tools, clean, model).cpu().state_dict()
            return model.cpu()

        spec = self.spec("attack_model", data=clean, attack=attack.poison_spec(plain(self.cfg.attack)))
        model = self.cached_model("attack_model", spec, build, lambda: self.new_model(clean), extras)
        generator = attack.new_generator(clean)
        generator.load_state_dict(extras["generator"])
        attack.use_generator(generator)
        return model

    def ssl_backbone(self, data: ImageSet) -> torch.nn.Module:
        """A fresh `cfg.model` whose backbone SimCLR trained on the unlabeled `data` (`cfg.ssl`),
        cached, so DBD and the feature-space cleansers of one attack share one backbone. The head
        is untrained. The trained projector (eval mode) rides along as the plain attribute
        `model.ssl_projector`: not a submodule, so parameters, state_dict and `.to()` are as
        before; its weights are cached in the backbone's entry."""
        s, epochs = plain(self.cfg.ssl), _ssl_epochs(self.cfg)
        extras: dict = {"projector": None}

        def build(checkpoint: Path | None = None) -> torch.nn.Module:
            model = self.new_model(data)
            views = SimCLRViews(data.shape[-1], data.shape[0], **s["augment"])
            module = SimCLR(
                model,
                views,
                s["optimizer"],
                int(s.get("schedule_epochs") or epochs),
                s["temperature"],
                bool(s["symmetric"]),
                int(s["projector_dim"]),
                self.channels_last,
            )
            bs = int(s["batch_size"])
            self.fit(
                module,
                data,
                "ssl",
                epochs,
                checkpoint=checkpoint,
                loader=lambda device: DeviceLoader(
                    data.x, data.y, bs, shuffle=True, device=device, seed=self.seed, drop_last=len(data) > bs
                ),
            )
            extras["projector"] = module.projector.cpu().state_dict()
            return model.cpu()

        model = self.cached_model(
            "ssl_backbone", self.spec("ssl_backbone", data=data), build, lambda: self.new_model(data), extras
        )
        proj = projector(model.head.in_features, int(s["projector_dim"]))
        proj.load_state_dict(extras["projector"])  # filled by the build or from the cache entry
        object.__setattr__(model, "ssl_projector", proj.eval())
        return model

    def attack_tools(self, clean: ImageSet, surrogate_epochs: int | None = None) -> AttackTools:
        """An attack's means (TrojanNN, LC, SSBA): its clean surrogate (`cfg.model` trained on the
        clean set, cached, its epochs under the stage caps), the run's trainer and a cache keyed by
        the surrogate's recipe."""
        epochs = self.stage_length(int(surrogate_epochs or self.trainer_cfg.max_epochs))
        surrogate = self.spec("model", data=clean, role="clean", epochs=epochs, loss="ce")

        def fit_module(module, data, name, max_epochs=None, augment=True, **kw):
            return self.fit(module, data, name, int(max_epochs or self.trainer_cfg.max_epochs), augment=augment, **kw)

        def cached(name: str, spec: dict, build):
            return self.cached("attack_artifact", build, data=clean, artifact=name, spec=spec, surrogate=surrogate)

        def clean_model(e: int | None = None) -> torch.nn.Module:
            return self.train_model(clean, "surrogate", role="clean", epochs=e or epochs)

        return AttackTools(
            clean=clean,
            clean_model=clean_model,
            fit=fit_module,
            cached=cached,
            device=self.device,
            seed=self.seed,
            spec={"surrogate": surrogate},
            stage_length=self.stage_length,
        )

    def cached_model(self, kind: str, spec: dict, build, new, extras: dict | None = None) -> torch.nn.Module:
        """`build(checkpoint)` once per `spec`, resumable from `checkpoint`; later calls load its
        weights into `new()`. `extras`: a dict that `build` fills with further state dicts (e.g. a
        projector), stored in the same entry and filled from it on a reuse; an entry that lacks
        one of its keys (written before that key was stored) is rebuilt."""
        return cached_model(self.cache, kind, spec, build, new, extras)


def cached_model(cache: ArtifactCache, kind: str, spec: dict, build, new, extras: dict | None = None):
    """See `Runner.cached_model`."""
    extras = {} if extras is None else extras
    if not cache.enabled:
        return build(None)
    partial = cache.entry(kind, spec) / "partial.ckpt"
    built: list[torch.nn.Module] = []

    def make() -> dict:
        built.append(build(partial))
        return {"state_dict": built[-1].state_dict(), **extras}

    payload = cache.get_or_build(kind, spec, make)
    if not built and not set(extras) <= set(payload):
        log.info("cache: %s entry lacks %s; rebuilding it", kind, sorted(set(extras) - set(payload)))
        payload = make()
        cache.store(kind, spec, payload)
    partial.unlink(missing_ok=True)
    if built:
        return built[-1]
    extras.update({k: v for k, v in payload.items() if k in extras})
    model = new()
    model.load_state_dict(payload["state_dict"])
    return model
