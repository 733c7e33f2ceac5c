"""A Hydra callback that ends every multirun with a summary: which points finished, which failed."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger("sweep")


class SweepSummary(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        done = sorted(p.parent.name for p in root.rglob("results.json"))
        failed = sorted(p.parent.name for p in root.rglob("error.json"))
        msg = f"sweep {root}: {len(done)} of {len(done) + len(failed)} points finished"
        if failed:
            msg += f"; {len(failed)} failed (see their error.json): {', '.join(failed)}"
        log.info(msg)
        print(msg)
        if done:
            print(f"table: python scripts/report.py {root}")
