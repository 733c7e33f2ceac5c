"""Sweeps: a Hydra callback that ends every multirun with a summary (which points finished, were
skipped or failed), and the check behind `sweep.skip_done` (a rerun skips finished points).

`SweepSummary.failed` then holds the number of failed points: run.py exits 1 when it is not 0.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from backdoor_bench.errors import check_value
from backdoor_bench.run_info import override_key, register_resolver

log = logging.getLogger("sweep")
# config parts that change where or how a run is recorded, not its result
RECORDING = ("sweep", "paths", "logger")

# Hydra resolves `hydra.sweep.subdir` (${point_name:...}) in the process that runs a job; every
# such process imports this module first (run.py does, and launchers unpickle the callback)
register_resolver()


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RECORDING}


def done_before(cfg, out_dir: Path) -> bool:
    """With `sweep.skip_done=true`: whether `out_dir` holds the results.json of a run of this
    same config (everything but `RECORDING` equal). A results.json of another config, or one
    that does not read, is no reason to skip (the point runs again, replacing it)."""
    skip = OmegaConf.select(cfg, "sweep.skip_done", default=False)
    check_value("sweep.skip_done", skip, bool, default=False)
    path = Path(out_dir) / "results.json"
    if not skip or not path.exists():
        return False
    try:
        old = json.loads(path.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("sweep.skip_done: %s does not read (%s): running the point again", path, e)
        return False
    new = {
        k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig | ListConfig) else v
        for k, v in cfg.items()
    }
    if _comparable(old) != _comparable(new):
        log.warning("sweep.skip_done: %s is from another config: running the point again", path)
        return False
    return True


class SweepSummary(Callback):
    failed = 0  # failed points of the last multirun in this process

    def __init__(self) -> None:
        self.points: list[Path] = []
        self.started = time.time()

    def on_multirun_start(self, config, **kwargs) -> None:
        self.points = []
        self.started = time.time()
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
        done = [p for p in points if (p / "results.json").exists()]
        failed = [p.name for p in points if not (p / "results.json").exists()]
        # a point that ran rewrote its results.json; a skipped one (sweep.skip_done) kept the old
        skipped = [p for p in done if (p / "results.json").stat().st_mtime < self.started]
        SweepSummary.failed = len(failed)
        msg = f"sweep {root}: {len(done)} of {len(points)} points finished"
        if skipped:
            msg += f" ({len(skipped)} skipped: finished before, sweep.skip_done=true)"
        if failed:
            msg += f"; {len(failed)} failed (see their error.json): {', '.join(failed)}"
        print(msg)
        if failed:
            kept = [str(o) for o in config.hydra.overrides.task if override_key(str(o)) != "sweep.skip_done"]
            args = " ".join(shlex.quote(o) for o in kept)
            print(f"resume: python run.py -m {args} hydra.sweep.dir={shlex.quote(str(root))} sweep.skip_done=true")
        if done:
            print(f"table: python scripts/report.py {root}")
