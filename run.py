"""Run one experiment point, or a sweep with -m.  See README.md.

python run.py                                   # digits + small_cnn + BadNets, no defense
python run.py attack=blended trainer=tiny
python run.py -m experiment=core/attacks

Exit status: 0 when the run (every point of a sweep) finished; 2 for a bad config (one line
`error: ...` on stderr); 1 when a run or any sweep point failed; 128 + the signal number when
SIGTERM or SIGINT stopped it. Every run folder ends with results.json or error.json (`kind`:
config, failed or interrupted), and the error also goes to the folder's run.log.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from backdoor_bench.cache import atomic_write_json
from backdoor_bench.errors import ConfigError
from backdoor_bench.results import result_line
from backdoor_bench.run_info import RunInfo
from backdoor_bench.sweep import SweepSummary, done_before

log = logging.getLogger("run")
OUTCOMES = ("results.json", "error.json")  # what a finished run leaves in its folder


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: not an Exception, so no handler on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def log_to_file(level: int, msg: str) -> None:
    """`msg` into the run's run.log only (the console gets the one `error:` line)."""
    record = log.makeRecord(log.name, level, __file__, 0, msg, (), None)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)


def fail(out_dir: Path, kind: str, error: str, tb: str | None = None) -> None:
    """Mark the run as failed: error.json (`kind`: config, failed, interrupted; an older
    results.json in the folder removed) and run.log."""
    (out_dir / "results.json").unlink(missing_ok=True)
    log_to_file(logging.ERROR, f"{kind} error: {error}" + (f"\n{tb}" if tb else ""))
    atomic_write_json(out_dir / "error.json", {"error": error, "kind": kind, **({"traceback": tb} if tb else {})})


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from backdoor_bench.pipeline import run

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if done_before(cfg, out_dir):  # sweep.skip_done: this point finished in an earlier run
            results = json.loads((out_dir / "results.json").read_text())
            log.info("skipped: %s/results.json holds this config's results (sweep.skip_done=true)", out_dir)
            print(result_line(results, out_dir / "results.json", note="skipped: finished before"))
            return results["metrics"].get("acc")
        for name in OUTCOMES:  # a rerun into the same folder: the old outcome is not this run's
            (out_dir / name).unlink(missing_ok=True)
        results = run(cfg, out_dir, RunInfo.from_hydra(hc, multirun))
    except Interrupted as e:
        fail(out_dir, "interrupted", f"interrupted by {e}")
        print(f"error: interrupted by {e}; {out_dir}/error.json marks the run as unfinished", file=sys.stderr)
        sys.exit(128 + e.signum)
    except ConfigError as e:
        fail(out_dir, "config", str(e))
        if multirun:  # one bad point of a sweep loses no other result
            log.error("config error: %s", e)
            return None
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        fail(out_dir, "failed", repr(e), traceback.format_exc())
        if not multirun:
            raise
        log.error("this sweep point failed; the sweep goes on: %r", e)
        return None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(result_line(results, out_dir / "results.json"))
    for w in results.get("warnings") or []:
        print(f"warning: {w}", file=sys.stderr)
    return results["metrics"]["acc"]


def cli() -> None:
    main()
    sys.exit(1 if SweepSummary.failed else 0)  # a sweep with a failed point is not a success


if __name__ == "__main__":
    cli()
