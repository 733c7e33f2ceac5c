"""A resumable sweep: an interrupted or partly failed multirun prints the command that resumes it
(`hydra.sweep.dir=<it> sweep.skip_done=true`), and that rerun skips the points that finished."""

import os
import shlex
import subprocess
import sys

from tests.conftest import ROOT


def test_rerun_with_skip_done_skips_the_finished_points(run_cli):
    first = run_cli("trainer=tiny", "attack.poison_rate=0.1,1.5", multirun=True, check=False)
    assert first.returncode == 1 and "1 of 2 points finished; 1 failed" in first.stdout
    finished = first.out_dir / "0_trainer=tiny,attack.poison_rate=0.1" / "results.json"
    written = finished.stat().st_mtime_ns
    resume = next(line for line in first.stdout.splitlines() if line.startswith("resume: "))
    cmd = shlex.split(resume.removeprefix("resume: "))
    assert cmd[:3] == ["python", "run.py", "-m"] and cmd[-1] == "sweep.skip_done=true"
    again = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *cmd[2:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_SILENT": "true"},
        timeout=600,
    )
    assert again.returncode == 1, again.stderr[-2000:]  # the bad point fails again
    assert "1 of 2 points finished (1 skipped: finished before, sweep.skip_done=true); 1 failed" in again.stdout
    assert finished.stat().st_mtime_ns == written  # not run again
    assert "result digits badnets none: " in again.stdout and "(skipped: finished before, " in again.stdout
    assert sorted(p.name for p in first.out_dir.iterdir() if p.is_dir()) == [
        "0_trainer=tiny,attack.poison_rate=0.1",
        "1_trainer=tiny,attack.poison_rate=1.5",
    ]
