"""A Hydra callback that ends every multirun with a summary: which points finished, which failed.

`SweepSummary.failed` then holds the number of failed points: run.py exits 1 when it is not 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger("sweep")


class SweepSummary(Callback):
    failed = 0  # failed points of the last multirun in this process

    def __init__(self) -> None:
        self.points: list[Path] = []

    def on_multirun_start(self, config, **kwargs) -> None:
        self.points = []
        SweepSummary.failed = 0

    def on_job_end(self, config, job_return, **kwargs) -> None:
        # the point's output folder (its working_dir is the launch folder: hydra.job.chdir is off)
        hydra_cfg = getattr(job_return, "hydra_cfg", None) or config
        out = hydra_cfg.get("hydra", {}).get("runtime", {}).get("output_dir") if hydra_cfg else None
        if out:
            self.points.append(Path(out))

    def on_multirun_end(self, config, **kwargs) -> None:
        root = Path(config.hydra.sweep.dir)
        # this sweep's points (a folder reused from an earlier sweep may hold others)
        points = self.points or sorted({p.parent for p in [*root.rglob("results.json"), *root.rglob("error.json")]})
        done = [p.name for p in points if (p / "results.json").exists()]
        failed = [p.name for p in points if not (p / "results.json").exists()]
        SweepSummary.failed = len(failed)
        msg = f"sweep {root}: {len(done)} of {len(points)} points finished"
        if failed:
            msg += f"; {len(failed)} failed (see their error.json): {', '.join(failed)}"
        log.info(msg)
        print(msg)
        if done:
            print(f"table: python scripts/report.py {root}")
