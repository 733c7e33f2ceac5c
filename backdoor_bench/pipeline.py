"""One run: config -> dataset -> attack.poison -> defense.run -> evaluate -> results.json.

This module holds that sequence and nothing else (DESIGN.md section 2).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

import backdoor_bench
from backdoor_bench.attacks.base import Attack, AttackTools, PoisonedSet
from backdoor_bench.cache import ArtifactCache, atomic_write_json
from backdoor_bench.data.augment import SimCLRViews
from backdoor_bench.data.imageset import ImageSet, load_dataset, random_subset
from backdoor_bench.data.loader import DeviceLoader
from backdoor_bench.defenses.base import Defense, DefenseContext
from backdoor_bench.figures import score_histogram, trigger_gallery
from backdoor_bench.metrics import attack_metrics, detection_metrics
from backdoor_bench.models import build_model
from backdoor_bench.results import close_logger, log_final, make_logger, versions
from backdoor_bench.training.fit import (
    augmentation,
    eval_device,
    fit,
    predict,
    stage_length,
    training_spec,
)
from backdoor_bench.training.simclr import SimCLR, projector
from backdoor_bench.training.supervised import Supervised
from backdoor_bench.validate import validate

log = logging.getLogger(__name__)


@contextmanager
def _stage(timings: dict, name: str):
    t0 = time.perf_counter()
    log.info("stage: %s", name)
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 3)


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Run one experiment point and return (and write) its results."""
    out_dir = Path(out_dir)
    attack, defense = validate(cfg)  # every config check happens here, before any data or training
    logger = make_logger(cfg, out_dir)
    try:
        return _run(cfg, out_dir, attack, defense, logger)
    finally:
        close_logger(logger)  # also when a sweep point fails: the next point gets its own W&B run


def _run(cfg, out_dir: Path, attack: Attack, defense: Defense, logger) -> dict:
    timings: dict[str, float] = {}
    cache = ArtifactCache(cfg.paths.cache_dir, enabled=cfg.cache.enabled)
    pl.seed_everything(cfg.seed, workers=False, verbose=False)

    with _stage(timings, "data"):
        train, test = load_dataset(cfg.dataset, cache)
        train = random_subset(train, cfg.trainer.train_subset, cfg.seed)
        test = random_subset(test, cfg.trainer.test_subset, cfg.seed)
        fingerprint = train.fingerprint()

    train_model, fit_module = trainers(cfg, cache, logger, timings)
    if attack.needs_tools:
        attack.bind(attack_tools(cfg, train, cache, train_model, fit_module))
    with _stage(timings, "poison"):
        spec = {
            "data": fingerprint,
            "mean": list(train.mean),
            "std": list(train.std),
            "attack": attack.poison_spec(OmegaConf.to_container(cfg.attack, resolve=True)),
            "seed": cfg.seed,
            "version": backdoor_bench.__version__,
            **({"tools": attack.tools.spec} if attack.needs_tools else {}),
        }
        poisoned = PoisonedSet.from_payload(
            cache.get_or_build("poisoned_set", spec, lambda: attack.poison(train, cfg.seed).to_payload())
        )
        log.info(
            "poisoned %d of %d training samples (attack=%s)", int(poisoned.poisoned.sum()), len(train), attack.name
        )

    ssl_backbone = ssl_trainer(cfg, cache, fit_module)
    ctx = _context(cfg, poisoned, train, defense, train_model, fit_module, ssl_backbone, cache, out_dir)
    with _stage(timings, "defense"):
        outcome = defense.run(ctx)

    with _stage(timings, "evaluate"):
        triggered = attack.apply(test.x)
        kw = {
            "batch_size": cfg.trainer.eval_batch_size,
            "device": eval_device(cfg.trainer),
            "bf16": str(cfg.trainer.precision).startswith("bf16"),
        }
        pred_clean, pred_triggered = predict(outcome.model, test.x, **kw), predict(outcome.model, triggered, **kw)
        metrics = {
            **attack_metrics(pred_clean, pred_triggered, test.y, attack.target_label(test.y), attack.asr_mask(test.y)),
            **attack.extra_metrics(pred_clean, pred_triggered, test.y),
        }
        detection = None
        if outcome.verdict is not None:
            v = outcome.verdict
            detection = detection_metrics(
                v.kept, v.labels, poisoned.train.y, poisoned.poisoned, poisoned.y_true, v.trusted
            )

    results = {
        "metrics": metrics,
        "detection": detection,
        "defense_extra": outcome.extra or None,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "timing": {**timings, "total": round(sum(v for k, v in timings.items() if "/" not in k), 3)},
        "versions": versions(),
        "data": {
            "name": cfg.dataset.name,
            "fingerprint": fingerprint,
            "n_train": len(train),
            "n_test": len(test),
            "n_poisoned": int(poisoned.poisoned.sum()),
            "n_cover": int(poisoned.cover.sum()),
        },
        "cache": cache.events,
    }
    atomic_write_json(out_dir / "results.json", results)
    log.info("results: %s", " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None))

    images = {}
    try:
        show = _gallery_indices(test, attack)
        images["trigger_gallery"] = trigger_gallery(
            [(attack.name, test.x[show], triggered[show])], out_dir / "trigger_gallery.png"
        )
    except Exception as e:  # a figure never costs a result
        log.warning("could not draw the trigger gallery: %s", e)
    if outcome.verdict is not None and outcome.verdict.scores is not None:
        try:
            images["score_histogram"] = score_histogram(
                outcome.verdict.scores,
                poisoned.poisoned,
                outcome.verdict.kept,
                out_dir / "score_histogram.png",
                f"{defense.name} scores, {attack.name} (kept: {int(outcome.verdict.kept.sum())})",
            )
        except Exception as e:
            log.warning("could not draw the score histogram: %s", e)
    log_final(logger, results, images)
    return results


def _gallery_indices(test: ImageSet, attack: Attack, n: int = 4) -> torch.Tensor:
    """The first test image of `n` different classes among those that enter ASR."""
    picks, seen = [], set()
    for i in attack.asr_mask(test.y).nonzero().flatten().tolist():
        if int(test.y[i]) not in seen:
            picks.append(i)
            seen.add(int(test.y[i]))
        if len(picks) == n:
            break
    return torch.tensor(picks, dtype=torch.long)


def trainers(cfg, cache: ArtifactCache, logger, timings: dict):
    """`train_model` (standard supervised training of a fresh `cfg.model`, cached by spec) and
    `fit_module` (any Lightning module with the run's trainer), shared by attacks and defenses."""
    data_cfg, tcfg = cfg.dataset, cfg.trainer

    def fit_module(
        module: pl.LightningModule,
        data: ImageSet,
        name: str,
        max_epochs: int | None = None,
        augment: bool = True,
        checkpoint: Path | None = None,
        **kw,
    ) -> pl.LightningModule:
        """Train any Lightning module on `data` with the run's trainer settings and augmentation."""
        with _stage(timings, f"train/{name}"):
            return fit(
                module,
                data.x,
                data.y,
                tcfg,
                max_epochs=int(max_epochs or tcfg.max_epochs),
                augment=augmentation(data_cfg) if augment else None,
                seed=cfg.seed,
                logger=logger,
                checkpoint=checkpoint,
                **kw,
            )

    def train_model(
        data: ImageSet, name: str, cache_spec: dict | None = None, loss: str = "ce", max_epochs: int | None = None
    ) -> torch.nn.Module:
        """Standard supervised training of a fresh `cfg.model` on `data`; cached when `cache_spec` is
        given (the key adds everything that determines the model: data, augmentation, model, training)."""
        epochs = int(max_epochs or tcfg.max_epochs)

        def build(checkpoint=None) -> torch.nn.Module:
            torch.manual_seed(cfg.seed)  # the same init whatever was built or loaded before
            model = _new_model(cfg, data)
            module = Supervised(
                model,
                OmegaConf.to_container(tcfg.optimizer, resolve=True),
                epochs,
                loss=loss,
                channels_last=bool(tcfg.channels_last),
                log_prefix=name,
            )
            fit_module(module, data, name, epochs, checkpoint=checkpoint)
            return model.cpu()

        if cache_spec is None:
            return build()
        spec = {
            **cache_spec,
            "data": data.fingerprint(),
            **_model_spec(cfg, epochs),
            "mean": list(data.mean),
            "std": list(data.std),
            "loss": loss,
        }
        return _cached_model(cache, "model", spec, build, lambda: _new_model(cfg, data))

    return train_model, fit_module


def _new_model(cfg, data: ImageSet) -> torch.nn.Module:
    return build_model(cfg.model, data.num_classes, data.shape[0], data.mean, data.std)


def _cached_model(
    cache: ArtifactCache, kind: str, spec: dict, build, new, extras: dict | None = None
) -> torch.nn.Module:
    """`build(checkpoint)` once per `spec`, resumable from `checkpoint`; later calls load its weights
    into `new()`. `extras`: a dict that `build` fills with further state dicts (e.g. a projector),
    stored in the same entry and filled from it on a reuse; an entry that lacks one of its keys
    (written before that key was stored) is rebuilt."""
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


def ssl_trainer(cfg, cache: ArtifactCache, fit_module):
    """`ssl_backbone(data, ssl_cfg=None)`: a fresh `cfg.model` whose backbone SimCLR trained on the
    unlabeled `data` (`cfg.ssl`; DESIGN.md `ctx.ssl_backbone`). Cached by data, SSL config, model
    and seed, so DBD and the feature-space cleansers of one attack share one backbone. The head
    is untrained. The trained projector (`simclr.projector`, in eval mode) rides along as the
    plain attribute `model.ssl_projector`: not a submodule, so the model's parameters, state_dict
    and `.to()` are as before; its weights are cached in the backbone's entry."""
    tcfg = cfg.trainer

    def ssl_backbone(data: ImageSet, ssl_cfg=None) -> torch.nn.Module:
        s = OmegaConf.to_container(ssl_cfg if ssl_cfg is not None else cfg.ssl, resolve=True)
        epochs = stage_length(tcfg, s["epochs"])
        spec = {
            "role": "ssl",
            "ssl": {**s, "epochs": epochs},
            "data": data.fingerprint(),
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "precision": str(tcfg.precision),
            "mean": list(data.mean),
            "std": list(data.std),
            "seed": cfg.seed,
            "version": backdoor_bench.__version__,
        }

        def build(checkpoint=None) -> torch.nn.Module:
            torch.manual_seed(cfg.seed)
            model = _new_model(cfg, data)
            views = SimCLRViews(data.shape[-1], data.shape[0], **s["augment"])
            module = SimCLR(
                model,
                views,
                s["optimizer"],
                int(s.get("schedule_epochs") or epochs),
                s["temperature"],
                bool(s["symmetric"]),
                int(s["projector_dim"]),
                bool(tcfg.channels_last),
            )
            bs = int(s["batch_size"])
            fit_module(
                module,
                data,
                "ssl",
                epochs,
                checkpoint=checkpoint,
                loader=lambda device: DeviceLoader(
                    data.x, data.y, bs, shuffle=True, device=device, seed=cfg.seed, drop_last=len(data) > bs
                ),
            )
            extras["projector"] = module.projector.cpu().state_dict()
            return model.cpu()

        extras: dict = {"projector": None}
        model = _cached_model(cache, "ssl_backbone", spec, build, lambda: _new_model(cfg, data), extras)
        proj = projector(model.head.in_features, int(s["projector_dim"]))
        proj.load_state_dict(extras["projector"])  # filled by the build or from the cache entry
        object.__setattr__(model, "ssl_projector", proj.eval())
        return model

    return ssl_backbone


def _model_spec(cfg, epochs: int) -> dict:
    """Everything besides the data that determines a trained model."""
    d = cfg.dataset
    return {
        "augment": OmegaConf.to_container(d.augment, resolve=True) if d.get("augment") else None,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "training": training_spec(cfg.trainer),
        "epochs": epochs,
        "seed": cfg.seed,
        "version": backdoor_bench.__version__,
    }


def attack_tools(cfg, clean: ImageSet, cache: ArtifactCache, train_model, fit_module) -> AttackTools:
    """The attacker's means: its clean surrogate model and the run's trainer, with a cache."""
    epochs = cfg.attack.get("surrogate_epochs") or cfg.trainer.max_epochs
    fingerprint = clean.fingerprint()

    def cached(kind: str, spec: dict, build):
        if not cache.enabled:
            return build()
        return cache.get_or_build(kind, {**spec, "data": fingerprint, "seed": cfg.seed}, build)

    return AttackTools(
        clean=clean,
        fit=fit_module,
        cached=cached,
        device=eval_device(cfg.trainer),
        seed=cfg.seed,
        clean_model=lambda e=None: train_model(
            clean, "surrogate", cache_spec={"role": "clean"}, max_epochs=e or epochs
        ),
        spec={"surrogate": {**_model_spec(cfg, int(epochs)), "mean": list(clean.mean), "std": list(clean.std)}},
    )


def _context(
    cfg,
    poisoned: PoisonedSet,
    clean_train: ImageSet,
    defense: Defense,
    train_model,
    fit_module,
    ssl_backbone,
    cache: ArtifactCache,
    out_dir,
) -> DefenseContext:
    """The defense's view: the poisoned set (no ground truth) plus shared, cached mechanics."""
    train = poisoned.train

    def backdoored_model() -> torch.nn.Module:
        return train_model(train, "backdoored", cache_spec={"role": "backdoored"})

    clean = None
    if defense.needs_clean:  # trusted clean data: original images of samples the attack left alone
        # (neither poisoned nor cover samples, whose clean originals would reveal the trigger)
        g = torch.Generator().manual_seed(cfg.seed + 1)
        pool = (~(poisoned.poisoned | poisoned.cover)).nonzero().flatten()
        n = max(1, int(round(defense.clean_fraction * len(train))))
        clean = clean_train.subset(pool[torch.randperm(len(pool), generator=g)[:n]].sort().values)

    tcfg = cfg.trainer

    def stage_checkpoint(stage: str) -> Path | None:
        """Where a long defense stage keeps its per-epoch checkpoint, keyed by everything that
        determines it, so rerunning an interrupted run resumes the stage (None: cache off)."""
        if not cache.enabled:
            return None
        spec = {
            "stage": stage,
            "defense": OmegaConf.to_container(cfg.defense, resolve=True),
            "ssl": OmegaConf.to_container(cfg.ssl, resolve=True),
            "data": train.fingerprint(),
            "caps": [tcfg.get("max_stage_epochs"), tcfg.get("max_stage_steps")],
            **_model_spec(cfg, int(tcfg.max_epochs)),
        }
        entry = cache.entry("defense_stage", spec)
        entry.mkdir(parents=True, exist_ok=True)
        return entry / "partial.ckpt"

    def cached(kind: str, spec: dict, build) -> dict:
        """A defense artifact (a dict of tensors) built once per `spec` + data, model and seed."""
        if not cache.enabled:
            return build()
        full = {
            "spec": spec,
            "data": train.fingerprint(),
            "ssl": OmegaConf.to_container(cfg.ssl, resolve=True),
            "caps": [tcfg.get("max_stage_epochs"), tcfg.get("max_stage_steps")],
            **_model_spec(cfg, int(tcfg.max_epochs)),
        }
        return cache.get_or_build(kind, full, build)

    return DefenseContext(
        train=train,
        train_model=train_model,
        backdoored_model=backdoored_model,
        fit=fit_module,
        ssl_backbone=lambda ssl_cfg=None: ssl_backbone(train, ssl_cfg),
        clean=clean,
        seed=cfg.seed,
        out_dir=Path(out_dir),
        device=eval_device(tcfg),
        augment=augmentation(cfg.dataset),
        stage_length=lambda n, kind="epochs", **kw: stage_length(tcfg, n, kind, **kw),
        channels_last=bool(tcfg.channels_last),
        stage_checkpoint=stage_checkpoint,
        new_model=lambda: _new_model(cfg, train),
        cached=cached,
    )
