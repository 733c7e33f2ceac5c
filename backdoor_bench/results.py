"""Results bookkeeping: the logger (W&B offline, CSV or none), versions, final logging, the
one-line result a run prints."""

from __future__ import annotations

import json
import logging
import math
import platform
import subprocess
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from backdoor_bench.run_info import RunInfo

log = logging.getLogger(__name__)


def is_wandb(logger) -> bool:
    return type(logger).__name__ == "WandbLogger"


def make_logger(cfg, out_dir: Path, info: RunInfo | None = None):
    """The Lightning logger of `cfg.logger`; None for `logger=none`. A W&B run gets the resolved
    config (plus `choices` and `overrides` of `info`) as its config, and, where the config leaves
    them null, its name and group from `info` (`RunInfo.run_name`, `RunInfo.group`)."""
    node = cfg.get("logger")
    if not node or "_target_" not in node:
        return None
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if not str(node._target_).endswith("WandbLogger"):
        return instantiate(node)
    info = info or RunInfo()
    config = {
        **OmegaConf.to_container(cfg, resolve=True),
        "choices": {g: info.choice(g, cfg) for g in ("dataset", "model", "attack", "defense", "trainer")},
        "overrides": list(info.overrides),
    }
    tags = sorted({config["choices"][g] for g in ("dataset", "attack", "defense")})
    # a partial: the config dict goes to W&B as it is (instantiate would build its `_target_`s)
    make = instantiate(node, _partial_=True)
    settings = make.keywords.get("settings")
    if settings is not None:
        import wandb

        # W&B checks wandb.init's arguments (and warns) before a run's settings apply: they go to
        # its setup first, offline included (the process setup starts keeps its mode)
        if node.get("offline"):
            settings.mode = "offline"
        wandb.setup(settings=settings)
    return make(
        name=node.get("name") or info.run_name(cfg),
        group=node.get("group") or info.group,
        config=config,
        tags=[t[:64] for t in tags],
    )


def versions() -> dict:
    import hydra
    import pytorch_lightning
    import torch
    import torchvision

    import backdoor_bench

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "hydra": hydra.__version__,
        "backdoor_bench": backdoor_bench.__version__,
        "cuda": torch.version.cuda,
    }
    try:
        root = Path(backdoor_bench.__file__).resolve().parent.parent
        out["git"] = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except Exception:
        out["git"] = None
    return out


SECTIONS = ("metrics", "detection", "input_detection")


def flat_metrics(results: dict) -> dict:
    """`metrics/acc`, `detection/tpr`, `input_detection/auroc`, ... for loggers."""
    return {
        f"{section}/{k}": v for section in SECTIONS for k, v in (results.get(section) or {}).items() if v is not None
    }


def log_final(logger, results: dict, images: dict, table: dict | None = None) -> None:
    """Log final metrics and figures (results.json is already written: a logger never loses it).
    W&B: the metrics become the run's summary, the figures images, `table` ({"columns", "rows"},
    see `verdict_table`) the W&B Table `verdict`."""
    if logger is None:
        return
    try:
        if is_wandb(logger):
            _log_wandb(logger.experiment, results, images, table)
            return
        logger.log_metrics(flat_metrics(results))
        if images and hasattr(logger, "log_image"):
            for key, path in images.items():
                logger.log_image(key=key, images=[str(path)])
    except Exception as e:
        log.warning("logger failed: %s", e)


def _log_wandb(run, results: dict, images: dict, table: dict | None) -> None:
    import wandb

    media = {key: wandb.Image(str(path)) for key, path in images.items()}
    if table is not None:
        media["verdict"] = wandb.Table(columns=table["columns"], data=table["rows"])
    if media:
        run.log(media)
    run.summary.update(flat_metrics(results))


def verdict_table(verdict, poisoned, limit: int = 10_000) -> dict | None:
    """A scoring defense's verdict, one row per training sample: its index, score (None where
    the defense scored none), whether it was kept, its given label, the verdict's label, and the
    ground truth (poisoned, cover, true label). None for a verdict without scores. Over `limit`
    samples (W&B's row limit for a run's table), every k-th sample, evenly spread, so the table
    stays a fair sample of the set."""
    if verdict is None or verdict.scores is None:
        return None
    n = len(verdict.scores)
    step = max(1, math.ceil(n / limit))
    labels = verdict.labels if verdict.labels is not None else poisoned.train.y
    rows = [
        [
            i,
            float(verdict.scores[i]) if math.isfinite(float(verdict.scores[i])) else None,
            bool(verdict.kept[i]),
            int(poisoned.train.y[i]),
            int(labels[i]),
            bool(poisoned.poisoned[i]),
            bool(poisoned.cover[i]),
            int(poisoned.y_true[i]),
        ]
        for i in range(0, n, step)
    ]
    if step > 1:
        log.info("verdict table: %d of %d samples (every %d-th; W&B's row limit)", len(rows), n, step)
    columns = ["index", "score", "kept", "label", "verdict_label", "poisoned", "cover", "true_label"]
    return {"columns": columns, "rows": rows}


RESULT_KEYS = {
    "detection": ("tpr", "fpr", "precision", "kept_poison_rate"),
    "input_detection": ("tpr", "fpr", "auroc", "asr_passed"),
}


def result_line(results: dict, path: Path, note: str | None = None) -> str:
    """The line a run prints: `result <dataset> <attack> <defense>: {metrics}`, the verdict's
    `detection {tpr, fpr, precision, kept_poison_rate}` and an input detector's `input detection
    {tpr, fpr, auroc, asr_passed}` when the run has them, then `(<seconds or note>, <path>)`.
    Options by their full name (`dst/badnets`); figures rounded to 4 places."""
    cfg, choices = results.get("config") or {}, results.get("choices") or {}
    names = [choices.get(g) or (cfg.get(g) or {}).get("name") for g in ("dataset", "attack", "defense")]

    def rounded(d: dict) -> str:
        return json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()})

    parts = [f"result {' '.join(map(str, names))}: {rounded(results['metrics'])}"]
    for section, keys in RESULT_KEYS.items():
        if results.get(section):
            parts.append(f"{section.replace('_', ' ')} {rounded({k: results[section].get(k) for k in keys})}")
    seconds = f"{results['timing']['total']:.1f}s"
    parts.append(f"({note or seconds}, {path})")
    return "  ".join(parts)


def close_logger(logger) -> None:
    """Flush and close; W&B needs finish() between sweep jobs or they merge into one run."""
    if logger is None:
        return
    try:
        logger.finalize("success")
    except Exception as e:
        log.warning("logger failed to close: %s", e)
    if is_wandb(logger):
        import wandb

        wandb.finish()
