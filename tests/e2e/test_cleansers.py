"""ssl_knn and flow_relabel end to end through run.py at trainer=tiny."""

import json

import pytest

from tests.conftest import report_table, run_table


def results(p):
    return json.loads((p.out_dir / "results.json").read_text())


@pytest.mark.parametrize("defense", ["ssl_knn", "flow_relabel"])
def test_cleanser_runs_end_to_end(run_cli, defense):
    p = run_cli(f"defense={defense}", "trainer=tiny")
    r = results(p)
    d = r["detection"]
    assert d is not None and {"tpr", "fpr", "precision", "n_relabeled", "relabel_acc"} <= set(d)
    assert "train/ssl" in r["timing"]
    # a verdict that changes nothing reuses the backdoored model instead of retraining
    assert ("train/retrain" in r["timing"]) == (d["n_flagged"] > 0)
    if defense == "flow_relabel":
        extra = r["defense_extra"]
        assert len(extra["s_nd"]) == 10 and len(extra["s_d"]) == 10
        assert (p.out_dir / "foreign_density.png").stat().st_size > 1000
    else:
        extra = r["defense_extra"]
        assert extra["k"] == 50 and extra["embedding"] == "projector" and extra["embedding_dim"] == 128
        assert extra["class_gate"] == "dominant" and extra["dominance"] == 2.0 and extra["min_outflow"] == 0.3
        assert set(extra["gate_opened"]) <= set(range(10))
        assert (p.out_dir / "score_histogram.png").stat().st_size > 1000
        # the backbone embedding on the same poisoned set reuses the cached SSL backbone
        p = run_cli("defense=ssl_knn", "defense.embedding=backbone", "defense.class_gate=none", "trainer=tiny")
        extra = results(p)["defense_extra"]
        assert extra["embedding"] == "backbone" and extra["embedding_dim"] == 128  # small_cnn: 4 x width 32
        assert extra["class_gate"] == "none" and extra["gate_opened"] == list(range(10))
        assert "cache: reused ssl_backbone" in (p.out_dir / "run.log").read_text()


# A slice of each table (the tiny trainer on digits): every defense of the table and one of its
# attacks per table (flows/badnets in flows/table1, run beside its baselines in
# test_paper_baselines.py; flows/blended in table3, wanet in table4, lc and flows/blended in
# ssl_knn/cifar10); every attack runs in test_runs.py, and every point of each table validates in
# test_paper_baselines.py.
SLICES = {
    "flows/table3": {"attack": "flows/blended"},
    "flows/table4": {"attack": "wanet", "attack.poison_rate": "0.01,0.2"},
    "ssl_knn/cifar10": {"attack": "lc,flows/blended"},
}


@pytest.mark.parametrize("experiment", list(SLICES))
def test_cleanser_experiment_runs_at_tiny_scale(tmp_path, experiment):
    p = run_table(tmp_path / "multirun", tmp_path / "cache", experiment, **SLICES[experiment])
    ref = [] if experiment.startswith("ssl_knn") else ["--reference", experiment, "--force"]
    rep = report_table(p.out_dir, *ref, "--metrics", "acc,asr,tpr,fpr,relabel_acc")
    assert ("paper" in rep) == bool(ref)
    if experiment == "flows/table3":  # flow_relabel on supervised features: no SSL backbone
        full, supervised = sorted(p.results, key=lambda r: r["config"]["defense"]["variant"])
        assert "train/ssl" in full["timing"] and "train/ssl" not in supervised["timing"]
        assert "train/backdoored" in supervised["timing"]


def test_diagnose_ssl_embedding_scores_clean_and_poisoned_apart(tmp_path):
    """scripts/diagnose.py --ssl-embedding: the shared SimCLR embedding's kNN agreement for clean and
    poisoned samples apart, both embeddings, k = 10 and 50 (outside run.py; the truth only scores)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "embedding.jsonl"
    cmd = [sys.executable, "scripts/diagnose.py", "--ssl-embedding", "--out", str(out)]
    subprocess.run([*cmd, "defense=ssl_knn", "attack=badnets", "trainer=tiny"], cwd=ROOT, check=True, timeout=600)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["embedding"], r["k"]) for r in rows] == [
        ("projector", 10),
        ("projector", 50),
        ("backbone", 10),
        ("backbone", 50),
    ]
    for r in rows:
        shares = [v for key, v in r.items() if key not in ("embedding", "k", "net_outflow")]
        assert len(shares) == 7 and all(0 <= v <= 1 for v in shares) and len(r["net_outflow"]) == 10
        # the true label of a poisoned sample is never its given one (BadNets relabels to the target)
        assert r["poisoned_majority_true_label"] <= r["poisoned_majority_not_label"] + 1e-6
