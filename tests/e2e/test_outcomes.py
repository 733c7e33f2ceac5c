"""How a run ends is never silent: a sweep whose points failed exits 1 (after its summary), a
rerun into a sweep folder replaces each point's old outcome, SIGTERM leaves error.json
(kind "interrupted") and a non-zero status, and single-run folders are unique."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT


def test_a_sweep_whose_points_all_fail_exits_1_after_its_summary(run_cli):
    p = run_cli("trainer=tiny", "attack.poison_rate=1.5,2.0", multirun=True, check=False)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "0 of 2 points finished; 2 failed" in p.stdout
    for point in ("0_trainer=tiny,attack.poison_rate=1.5", "1_trainer=tiny,attack.poison_rate=2.0"):
        error = json.loads((p.out_dir / point / "error.json").read_text())
        assert error["kind"] == "config" and "attack.poison_rate" in error["error"]
        assert "config error" in (p.out_dir / point / "run.log").read_text()


def test_a_rerun_clears_each_points_old_outcome(run_cli):
    first = run_cli("trainer=tiny", "trainer.max_epochs=0", multirun=True, check=False)
    point = first.out_dir / "0_trainer=tiny,trainer.max_epochs=0"
    assert (point / "error.json").exists()
    (point / "results.json").write_text(json.dumps({"metrics": {"acc": 1.0}}))  # an older success
    again = run_cli("trainer=tiny", "trainer.max_epochs=0", multirun=True, check=False)
    assert again.returncode == 1 and "0 of 1 points finished" in again.stdout
    assert not (point / "results.json").exists() and (point / "error.json").exists()


def test_sigterm_leaves_an_interrupted_marker_and_a_nonzero_status(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        f"hydra.run.dir={out}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "logger=none",
        "trainer=tiny",
        "trainer.max_epochs=50",
        "trainer.train_subset=null",
    ]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and p.poll() is None:
            log = out / "run.log"
            if log.exists() and "stage: poison" in log.read_text():
                break
            time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
    assert p.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM")
    error = json.loads((out / "error.json").read_text())
    assert error["kind"] == "interrupted" and not (out / "results.json").exists()
    assert "interrupted error" in (out / "run.log").read_text()


def test_single_run_folders_carry_microseconds():
    """Two runs started in the same second get their own folders (and run.log)."""
    from omegaconf import OmegaConf

    hydra = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "config.yaml").hydra, resolve=False)
    assert "%H-%M-%S-%f" in hydra["run"]["dir"] and "%H-%M-%S-%f" in hydra["sweep"]["dir"]
