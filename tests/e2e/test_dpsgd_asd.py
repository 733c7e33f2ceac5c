"""DP-SGD and ASD end to end through run.py at trainer=tiny (one sweep), DP-SGD's one-line
error when told to keep the run's BatchNorm model, and ASD's pools traced against the truth by
scripts/diagnose.py (outside run.py)."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_dpsgd_and_asd_sweep_writes_results(run_cli):
    p = run_cli("defense=dpsgd,asd", "trainer=tiny", multirun=True)
    runs = [json.loads(f.read_text()) for f in p.out_dir.rglob("results.json")]
    runs = {r["config"]["defense"]["name"]: r for r in runs}
    assert set(runs) == {"dpsgd", "asd"}, p.stdout[-2000:]
    for r in runs.values():
        assert {"acc", "acc_nontarget", "asr", "ra"} <= set(r["metrics"]) and 0 <= r["metrics"]["acc"] <= 1
    dp = runs["dpsgd"]
    e = dp["defense_extra"]
    assert dp["config"]["defense"]["model_norm"] == "group" and asd_norm(runs) == "batch"
    assert dp["detection"] is None and "train/backdoored" not in dp["timing"]
    assert e["epsilon"] > 0 and e["delta"] == 1e-5 and e["max_grad_norm"] == 1.0 and e["noise_multiplier"] == 0.5
    assert (e["epochs"], e["steps"], e["sample_rate"]) == (2, 4, 0.25)  # 256 images, expected batch 64, 2 x 2 steps
    assert dp["config"]["defense"]["optimizer"] == dp["config"]["trainer"]["optimizer"]  # the run's recipe
    asd = runs["asd"]
    d, e = asd["detection"], asd["defense_extra"]
    assert d["n_removed"] == 128 and {"precision", "tpr", "fpr", "kept_poison_rate", "trusted_purity"} <= set(d)
    assert d["trusted_purity"] == 1.0 and d["n_trusted"] == e["n_seeds"] > 0  # the seeds come from untouched samples
    assert e["stage_epochs"] == {"class_aware": 2, "class_agnostic": 2, "meta": 2}
    assert e["pool_sizes"]["class_aware"] == [e["n_seeds"]] * 2 and e["pool_sizes"]["meta"] == [128, 128]
    assert "train/asd" in asd["timing"] and "train/backdoored" not in asd["timing"]


def asd_norm(runs):
    return runs["asd"]["config"]["model"]["norm"]


def test_dpsgd_on_a_batchnorm_model_fails_with_one_line(run_cli):
    p = run_cli("defense=dpsgd", "defense.model_norm=null", "trainer=tiny", check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    err = p.stderr.strip().splitlines()[-1]
    assert err == (
        "error: defense=dpsgd needs a model without BatchNorm: set defense.model_norm=group or model.norm=group "
        "(small_cnn, preact_resnet18, resnet18 and resnet32 have the option)"
    )
    assert "Traceback" not in p.stderr + p.stdout and not (p.out_dir / "results.json").exists()


def test_diagnose_asd_trace_scores_every_epochs_pool(tmp_path):
    """--asd-trace: one row per epoch's split, in stage order, whose last pool is the verdict."""
    out = tmp_path / "trace.jsonl"
    cmd = [sys.executable, "scripts/diagnose.py", "--asd-trace", "--out", str(out), "defense=asd", "trainer=tiny"]
    subprocess.run([*cmd, "attack=badnets"], cwd=ROOT, check=True, timeout=600, capture_output=True)
    *trace, final = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["epoch"], r["stage"]) for r in trace] == [
        (1, "class_aware"),
        (2, "class_aware"),
        (3, "class_agnostic"),
        (4, "class_agnostic"),
        (5, "meta"),
        (6, "meta"),
    ]
    n_seeds = final["extra"]["n_seeds"]
    assert [r["pool"] for r in trace] == [n_seeds, n_seeds, 128, 128, 128, 128]
    assert all(0 <= r["auroc_key"] <= 1 for r in trace) and all("auroc_loss" in r for r in trace[4:])
    assert trace[0]["pool_poisoned"] == 0  # the seeds alone: untouched samples
    d = final["detection"]
    assert final["oracle"] == "none (asd-trace)" and trace[-1]["pool_poisoned"] == d["fn"]
    assert trace[-1]["poison_left_labeled"] == d["fn"] / (d["tp"] + d["fn"])
