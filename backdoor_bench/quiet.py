"""A quiet console by default: what a run prints is its own progress and result.

- Lightning's INFO lines (devices found, "`Trainer.fit` stopped", ...) go to run.log only, and
  its advertisements ("Tip: ... try installing ...") nowhere: `LightningFilter`, installed on
  Hydra's console and file log handlers by conf/config.yaml (`hydra.job_logging`).
- Known, harmless library warnings are ignored: `silence_known_warnings` (before training).
- W&B prints nothing (`logger.settings.silent`, conf/logger/wandb.yaml).
- The progress bar is drawn only on a terminal (`training.fit.show_progress_bar`).
"""

from __future__ import annotations

import logging
import warnings

# (message pattern, category): warnings that say nothing about a run
KNOWN_WARNINGS = (
    (".*does not have many workers.*", Warning),  # data lives on the device: no DataLoader workers
    (".*LightningModule.*has parameters that were not used.*", Warning),
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated.*", Warning),  # Lightning's use of torch's pytree
)
LIGHTNING = ("pytorch_lightning", "lightning")


def silence_known_warnings() -> None:
    """Ignore `KNOWN_WARNINGS` (idempotent: `warnings` keeps each filter once)."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


class LightningFilter(logging.Filter):
    """Drops Lightning's advertisements; with `info=False` also its other records below WARNING."""

    def __init__(self, info: bool = True):
        super().__init__()
        self.info = info

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(LIGHTNING) or record.levelno >= logging.WARNING:
            return True
        return self.info and not str(record.msg).lstrip().startswith("\N{ELECTRIC LIGHT BULB} Tip")
