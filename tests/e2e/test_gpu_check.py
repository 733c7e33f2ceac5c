"""`make gpu-check` (scripts/gpu_check.py): its steps on the CPU (--smoke), and the one-line refusal
without CUDA."""

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _env():
    return {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT)}


def test_smoke_runs_every_step_and_prints_one_table(tmp_path):
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=3600,  # wall clock: about 70 s of CPU, but a loaded 2-core machine stretches it
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = p.stdout[p.stdout.index("| step | result | seconds |") :].strip().splitlines()
    assert table[1] == "|---|---|---:|"
    rows = {r.split(" | ")[0].lstrip("| "): r for r in table[2:]}
    assert list(rows) == ["device", "bench", "badnets", "dbr", "simclr epoch"]
    assert "torch " + torch.__version__ in rows["device"]
    assert "compute" in rows["bench"] and "runner" in rows["bench"] and "images/s" in rows["bench"]
    assert "ssl " in rows["bench"] and "ssl_compute " in rows["bench"] and "mixmatch " in rows["bench"]
    assert "ACC " in rows["badnets"] and "ASR " in rows["badnets"] and "2 epochs" in rows["badnets"]
    assert "split precision " in rows["dbr"] and "ACC " in rows["dbr"] and "ASR " in rows["dbr"]
    assert not any("FAILED" in r for r in table)
    assert all(float(r.rstrip(" |").rsplit("| ", 1)[1]) >= 0 for r in table[2:])
    assert (tmp_path / "gpu_check.md").read_text().strip() == "\n".join(table)
    assert (tmp_path / "badnets" / "results.json").exists() and (tmp_path / "dbr" / "results.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_without_cuda_it_exits_2_with_one_line(tmp_path):
    p = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert p.returncode == 2
    assert (p.stdout + p.stderr).strip() == (
        "error: make gpu-check needs a CUDA GPU (torch.cuda.is_available() is False); "
        "scripts/gpu_check.py --smoke runs its steps on the CPU at trainer=tiny"
    )
    assert not any(tmp_path.iterdir())
