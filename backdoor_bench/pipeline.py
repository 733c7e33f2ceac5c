"""One run: config -> dataset -> attack.poison -> defense.run -> evaluate -> results.json.

This module holds that sequence and nothing else; the mechanics it calls live in `Runner`
(runner.py), the defense's view of them in `DefenseContext` (defenses/base.py).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from backdoor_bench.attacks.base import Attack, PoisonedSet
from backdoor_bench.cache import atomic_write_json
from backdoor_bench.data.imageset import ImageSet
from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome, trusted_clean_subset
from backdoor_bench.figures import score_histogram, trigger_gallery
from backdoor_bench.metrics import attack_metrics, detection_metrics, input_detection_metrics
from backdoor_bench.results import close_logger, is_wandb, log_final, make_logger, verdict_table, versions
from backdoor_bench.run_info import RunInfo
from backdoor_bench.runner import Runner
from backdoor_bench.training.fit import predict
from backdoor_bench.validate import validate

log = logging.getLogger(__name__)


def run(cfg: DictConfig, out_dir: str | Path, info: RunInfo | None = None) -> dict:
    """Run one experiment point and return (and write) its results. `info`: how it was launched
    (the options chosen, its overrides, its sweep), recorded in results.json and the logger."""
    out_dir, info = Path(out_dir), info or RunInfo()
    attack, defense = validate(cfg)  # every config check happens here, before any data or training
    logger = make_logger(cfg, out_dir, info)
    try:
        return _run(cfg, out_dir, attack, defense, Runner(cfg, logger), info)
    finally:
        close_logger(logger)  # also when a sweep point fails: the next point gets its own W&B run


def _run(cfg, out_dir: Path, attack: Attack, defense: Defense, runner: Runner, info: RunInfo) -> dict:
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    with runner.timed("data"):
        train, test = runner.load_data()
    backdoored = None
    if attack.trains_model:
        with runner.timed("attack_training"):
            backdoored = attack_model(runner, attack, train)
    with runner.timed("poison"):
        poisoned = poison(runner, attack, train)
    if attack.trains_batches:  # the backdoored model's training, never a defense's
        runner.control_training(attack.train_batch, attack.poison_spec(plain_attack_cfg(cfg)))
    ctx = defense_context(runner, defense, poisoned, train, out_dir, backdoored)
    with runner.timed("defense"):
        outcome = defense.run(ctx)
    with runner.timed("evaluate"):
        triggered = attack.apply(test.x)
        metrics, detection, input_detection, warnings = evaluate(runner, attack, outcome, poisoned, test, triggered)
    results = {
        "metrics": metrics,
        "warnings": stand_in_warnings(attack) + warnings,
        "assets": attack.assets or None,
        "detection": detection,
        "input_detection": input_detection,
        "defense_extra": outcome.extra or None,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "choices": info.choices or None,  # the options by their full name (attack: dst/badnets)
        "overrides": list(info.overrides),
        "timing": {**runner.timings, "total": round(sum(v for k, v in runner.timings.items() if "/" not in k), 3)},
        "versions": versions(),
        "data": {
            "name": cfg.dataset.name,
            "fingerprint": train.fingerprint(),
            "n_train": len(train),
            "n_test": len(test),
            "n_poisoned": int(poisoned.poisoned.sum()),
            "n_cover": int(poisoned.cover.sum()),
            # a training-controlled attack poisons (also) inside each training batch of the backdoored
            # model (`per_batch`: its counts per full batch), or trains the model itself with its own
            # batches (`stored_set`: what the stored set the defenses saw holds); the poison mask and
            # n_poisoned cover only the stored set
            "train_time_poisoning": bool(attack.trains_batches or attack.trains_model),
            "per_batch": attack.batch_counts(int(cfg.trainer.batch_size)) if attack.trains_batches else None,
            "stored_set": getattr(attack, "stored_set", None) or None,
        },
        "cache": runner.cache.events,
        "resumed": runner.resumed,
    }
    atomic_write_json(out_dir / "results.json", results)
    log.info("results: %s", " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None))
    images = figures(attack, defense, outcome, poisoned, test, triggered, out_dir)
    log_final(
        runner.logger, results, images, verdict_table(outcome.verdict, poisoned) if is_wandb(runner.logger) else None
    )
    return results


def stand_in_warnings(attack: Attack) -> list[str]:
    """One line per asset the run replaced by its procedural stand-in (`assets.stand_ins=true`)."""
    lines = [
        f"attack.{key}: asset {a['asset']} not fetched, ran the procedural stand-in"
        for key, a in attack.assets.items()
        if a["path"] == "stand-in"
    ]
    for line in lines:
        log.warning(line)
    return lines


def bind_tools(runner: Runner, attack: Attack, train: ImageSet) -> None:
    """An attack that trains something gets its tools (once)."""
    if attack.needs_tools and attack.tools is None:
        attack.bind(runner.attack_tools(train, runner.cfg.attack.get("surrogate_epochs")))


def attack_model(runner: Runner, attack: Attack, train: ImageSet) -> torch.nn.Module:
    """The classifier an attack that controls training (IAD, LIRA) trains on the clean `train`
    with its trigger generator (cached; the attack keeps the generator for its triggers)."""
    bind_tools(runner, attack, train)
    return runner.attack_model(attack, train)


def poison(runner: Runner, attack: Attack, train: ImageSet) -> PoisonedSet:
    """The attack's poisoned training set, cached; an attack that trains gets its tools first."""
    bind_tools(runner, attack, train)
    payload = runner.cached(
        "poisoned_set",
        partial(_poison_payload, attack, train, runner.seed),
        data=train,
        attack=attack.poison_spec(plain_attack_cfg(runner.cfg)),
        surrogate=attack.tools.spec if attack.needs_tools else None,
    )
    poisoned = PoisonedSet.from_payload(payload)
    log.info("poisoned %d of %d training samples (attack=%s)", int(poisoned.poisoned.sum()), len(train), attack.name)
    return poisoned


def plain_attack_cfg(cfg) -> dict:
    return OmegaConf.to_container(cfg.attack, resolve=True)


def _poison_payload(attack: Attack, train: ImageSet, seed: int) -> dict:
    return attack.poison(train, seed).to_payload()


def defense_context(
    runner: Runner, defense: Defense, poisoned: PoisonedSet, clean_train: ImageSet, out_dir, backdoored=None
):
    """The defense's view: the poisoned set (no ground truth), the trusted clean subset when the
    defense needs one, and the runner's mechanics over a config without the attack; `backdoored`:
    the model an attack that controls training delivered (else standard training makes it)."""
    clean = None
    if defense.needs_clean:
        untouched = ~(poisoned.poisoned | poisoned.cover)
        clean = trusted_clean_subset(clean_train, untouched, defense.clean_fraction, runner.seed)
    mechanics = runner.without("attack")
    if backdoored is not None:
        mechanics = mechanics.with_backdoored(backdoored)
    return DefenseContext(mechanics, poisoned.train, clean, out_dir)


def evaluate(runner: Runner, attack: Attack, outcome: Outcome, poisoned: PoisonedSet, test: ImageSet, triggered):
    """ACC, ASR (and the attack's extra metrics) on the test set, through the outcome's input
    transformation if it has one; the verdict's detection rates; an input detector's rates; and the
    warnings of `sanity_warnings`."""
    kw = {
        "batch_size": runner.cfg.trainer.eval_batch_size,
        "device": runner.device,
        "bf16": str(runner.cfg.trainer.precision).startswith("bf16"),
        "transform": outcome.input_transform,
    }
    pred_clean, pred_triggered = predict(outcome.model, test.x, **kw), predict(outcome.model, triggered, **kw)
    metrics = {
        **attack_metrics(pred_clean, pred_triggered, test.y, attack.target_label(test.y), attack.asr_mask(test.y)),
        **attack.extra_metrics(pred_clean, pred_triggered, test.y),
    }
    detection = None
    if outcome.verdict is not None:
        v = outcome.verdict
        detection = detection_metrics(v.kept, v.labels, poisoned.train.y, poisoned.poisoned, poisoned.y_true, v.trusted)
    input_detection = None
    if outcome.input_detector is not None:
        d, m = outcome.input_detector, attack.asr_mask(test.y).bool()
        hit = pred_triggered[m] == attack.target_label(test.y)[m]
        input_detection = input_detection_metrics(d.scores(test.x), d.scores(triggered[m]), d.threshold, hit)
        log.info("input detection: %s", " ".join(f"{k}={v}" for k, v in input_detection.items()))
    return metrics, detection, input_detection, sanity_warnings(outcome, pred_clean)


def sanity_warnings(outcome: Outcome, pred_clean: torch.Tensor) -> list[str]:
    """What makes a result suspect though the run finished: a verdict that keeps no training
    sample, a final model that predicts one class for every test image. Each is logged as a
    WARNING and listed in results.json's `warnings`."""
    out = []
    v = outcome.verdict
    if v is not None and not v.kept.any():
        out.append(f"the defense's verdict keeps 0 of {len(v.kept)} training samples: the final model saw no data")
    if len(pred_clean) > 1 and bool((pred_clean == pred_clean[0]).all()):
        out.append(
            f"the final model predicts class {int(pred_clean[0])} for all {len(pred_clean)} test images: "
            "its ACC and ASR say nothing about the attack (check the data, the learning rate, the epochs)"
        )
    for w in out:
        log.warning(w)
    return out


def figures(attack, defense, outcome: Outcome, poisoned: PoisonedSet, test: ImageSet, triggered, out_dir) -> dict:
    """The trigger gallery and, for a verdict with scores, the score histogram; a figure never
    costs a result."""
    images = {}
    try:
        show = _gallery_indices(test, attack)
        images["trigger_gallery"] = trigger_gallery(
            [(attack.name, test.x[show], triggered[show])], out_dir / "trigger_gallery.png"
        )
    except Exception as e:
        log.warning("could not draw the trigger gallery: %s", e)
    v = outcome.verdict
    if v is not None and v.scores is not None:
        try:
            images["score_histogram"] = score_histogram(
                v.scores,
                poisoned.poisoned,
                v.kept,
                out_dir / "score_histogram.png",
                f"{defense.name} scores, {attack.name} (kept: {int(v.kept.sum())})",
            )
        except Exception as e:
            log.warning("could not draw the score histogram: %s", e)
    return images


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
