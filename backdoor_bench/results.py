"""Results bookkeeping: the logger (W&B offline, CSV or none), versions, final logging."""

from __future__ import annotations

import logging
import platform
import subprocess
from pathlib import Path

from hydra.utils import instantiate

log = logging.getLogger(__name__)


def make_logger(cfg, out_dir: Path):
    """The Lightning logger of `cfg.logger`; None for `logger=none`."""
    node = cfg.get("logger")
    if not node or "_target_" not in node:
        return None
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return instantiate(node)


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


def flat_metrics(results: dict) -> dict:
    """`metrics/acc`, `detection/tpr`, ... for loggers."""
    out = {f"metrics/{k}": v for k, v in results["metrics"].items() if v is not None}
    out.update({f"detection/{k}": v for k, v in (results.get("detection") or {}).items() if v is not None})
    return out


def log_final(logger, results: dict, images: dict) -> None:
    """Log final metrics and figures (results.json is already written: a logger never loses it)."""
    if logger is None:
        return
    try:
        logger.log_metrics(flat_metrics(results))
        if images and hasattr(logger, "log_image"):
            for key, path in images.items():
                logger.log_image(key=key, images=[str(path)])
    except Exception as e:
        log.warning("logger failed: %s", e)


def close_logger(logger) -> None:
    """Flush and close; W&B needs finish() between sweep jobs or they merge into one run."""
    if logger is None:
        return
    try:
        logger.finalize("success")
    except Exception as e:
        log.warning("logger failed to close: %s", e)
    if type(logger).__name__ == "WandbLogger":
        import wandb

        wandb.finish()
