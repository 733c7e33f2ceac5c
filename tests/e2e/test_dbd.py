"""DBD end to end through run.py at trainer=tiny: every variant, every loss, every dbd experiment."""

import json
import subprocess
import sys

import pytest

from tests.conftest import CONF, ROOT


def results(path):
    return json.loads(path.read_text())


def test_dbd_runs_and_reports_its_labeled_set(run_cli):
    p = run_cli("defense=dbd", "trainer=tiny")
    r = results(p.out_dir / "results.json")
    d = r["detection"]
    assert d["n_removed"] == 128 and d["n_relabeled"] == 0  # epsilon 0.5 of 256 samples stays labeled
    assert 0 <= d["kept_poison_rate"] <= 1 and d["tp"] + d["fn"] == r["data"]["n_poisoned"]
    assert {"train/ssl", "train/dbd_warmup", "train/dbd_mixmatch"} <= set(r["timing"])
    assert (p.out_dir / "score_histogram.png").stat().st_size > 1000
    assert r["defense_extra"] == {
        "variant": "full",
        "loss": "sce",
        "warmup_epochs": 2,
        "finetune_epochs": 2,
        "iterations": 2,
    }
    # a second defense on the same poisoned set reuses the SSL backbone
    again = run_cli("defense=dbd", "trainer=tiny", "defense.variant=ss_sce")
    assert "cache: reused ssl_backbone" in (again.out_dir / "run.log").read_text()


def test_every_variant_and_loss_runs(run_cli):
    p = run_cli(
        "defense=dbd", "trainer=tiny", "defense.variant=no_ssl,ss_ce,ss_sce_tune", "defense.loss=sce,apl", multirun=True
    )
    runs = [results(f) for f in sorted(p.out_dir.rglob("results.json"))]
    assert len(runs) == 6
    got = {(r["defense_extra"]["variant"], r["config"]["defense"]["loss"]) for r in runs}
    assert got == {(v, loss) for v in ("no_ssl", "ss_ce", "ss_sce_tune") for loss in ("sce", "apl")}
    for r in runs:
        extra = r["defense_extra"]
        assert extra["loss"] == ("ce" if extra["variant"] == "ss_ce" else r["config"]["defense"]["loss"])
        assert ("finetune_epochs" in extra) == (extra["variant"] == "no_ssl")
        assert ("tune_epochs" in extra) == (extra["variant"] == "ss_sce_tune")
        assert r["detection"]["n_removed"] == 128


def test_gce_warmup_runs(run_cli):
    r = results(run_cli("defense=dbd", "trainer=tiny", "defense.loss=gce").out_dir / "results.json")
    assert r["defense_extra"]["loss"] == "gce" and r["metrics"]["acc"] is not None


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment" / "dbd").glob("*.yaml")))
def test_dbd_experiment_runs_at_tiny_scale(run_cli, tmp_path, experiment):
    """Each dbd table as a sweep on digits with the tiny trainer, then its report beside the paper
    (table1's baselines run in test_paper_baselines.py)."""
    only_dbd = ["defense=none,dbd"] if experiment == "table1" else []
    p = run_cli(
        f"experiment=dbd/{experiment}",
        *only_dbd,
        "trainer=tiny",
        "dataset=digits",
        "model=small_cnn",
        "logger=none",
        multirun=True,
        timeout=1200,
    )
    n = {"table1": 6, "table2": 4, "table3": 20, "cpu": 4}[experiment]
    assert len(list(p.out_dir.rglob("results.json"))) == n
    assert not list(p.out_dir.rglob("error.json"))
    if experiment == "cpu":
        return
    rep = subprocess.run(
        [
            sys.executable,
            "scripts/report.py",
            str(p.out_dir),
            "--reference",
            f"dbd/{experiment}",
            "--metrics",
            "acc,asr,kept_poison_rate",
            "--out",
            str(tmp_path / "rep"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert rep.returncode == 0, rep.stderr
    assert "paper" in rep.stdout and "dbd" in rep.stdout
    if experiment == "table3":
        assert "dbd[no_ssl]" in rep.stdout and "dbd[ss_sce_tune]" in rep.stdout
