import json

import pandas as pd
import pytest

from backdoor_bench.report.table import load_runs, paper_table, read_reference, with_reference
from scripts.report import main as report_main  # noqa: I001


def write_run(root, name, attack, defense, acc, asr, seed=0):
    d = root / name
    d.mkdir(parents=True)
    r = {
        "metrics": {"acc": acc, "acc_nontarget": acc, "asr": asr, "ra": 1 - asr},
        "detection": None,
        "config": {
            "attack": {"name": attack, "poison_rate": 0.1},
            "defense": {"name": defense},
            "seed": seed,
            "model": {"_target_": "x.SmallCNN", "width": 32},
        },
        "timing": {"total": 1.0},
        "data": {"name": "digits"},
    }
    (d / "results.json").write_text(json.dumps(r))


@pytest.fixture
def runs_dir(tmp_path):
    write_run(tmp_path, "0", "badnets", "none", 0.90, 1.00)
    write_run(tmp_path, "1", "badnets", "none", 0.92, 0.98, seed=1)
    write_run(tmp_path, "2", "blended", "none", 0.80, 0.50)
    write_run(tmp_path, "3", "badnets", "dbd", 0.85, 0.02)
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "error.json").write_text(json.dumps({"error": "boom"}))
    return tmp_path


def test_table_means_over_seeds_in_percent(runs_dir):
    runs, errors = load_runs([runs_dir])
    assert len(runs) == 4 and len(errors) == 1
    t = paper_table(runs)
    assert list(t.index) == ["badnets", "blended"]
    assert list(t.columns) == [("none", "ACC"), ("none", "ASR"), ("dbd", "ACC"), ("dbd", "ASR")]
    assert t.loc["badnets", ("none", "ACC")] == pytest.approx(91.0)
    assert t.loc["badnets", ("none", "ASR")] == pytest.approx(99.0)
    assert t.loc["badnets", ("dbd", "ASR")] == pytest.approx(2.0)
    assert pd.isna(t.loc["blended", ("dbd", "ACC")])


def test_different_models_are_never_averaged(runs_dir):
    write_run(runs_dir, "5", "badnets", "none", 0.50, 0.50)
    r = json.loads((runs_dir / "5" / "results.json").read_text())
    r["config"]["model"] = {"_target_": "x.PreActResNet18", "width": 16}
    (runs_dir / "5" / "results.json").write_text(json.dumps(r))
    t = paper_table(load_runs([runs_dir])[0])
    assert t.loc[("SmallCNN-w32", "badnets"), ("none", "ACC")] == pytest.approx(91.0)
    assert t.loc[("PreActResNet18-w16", "badnets"), ("none", "ACC")] == pytest.approx(50.0)


def test_reference_deltas(runs_dir, tmp_path):
    ref = tmp_path / "ref.csv"
    ref.write_text("# a comment\nattack,defense,acc,asr\nbadnets,none,91.32,95.03\nbadnets,dbd,89.65,1.28\n")
    t = with_reference(paper_table(load_runs([runs_dir])[0]), read_reference(str(ref)))
    assert t.loc["badnets", ("none", "ACC", "paper")] == pytest.approx(91.32)
    assert t.loc["badnets", ("none", "ACC", "delta")] == pytest.approx(91.0 - 91.32)
    assert t.loc["badnets", ("dbd", "ASR", "delta")] == pytest.approx(2.0 - 1.28)
    assert pd.isna(t.loc["blended", ("none", "ACC", "paper")])


def test_packaged_reference_and_unknown_name():
    ref = read_reference("backdoorbench/cifar10_preactresnet18")
    assert {"attack", "defense", "acc", "asr"} <= set(ref.columns)
    assert ref.set_index(["attack", "defense"]).loc[("badnets", "none"), "asr"] == 95.03
    with pytest.raises(FileNotFoundError, match="no reference"):
        read_reference("nope/table9")


def test_cli_writes_csv_latex_and_figure(runs_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert report_main([str(runs_dir), "--out", str(out), "--reference", "backdoorbench/cifar10_preactresnet18"]) == 0
    text = capsys.readouterr().out
    assert "badnets" in text and "failed sweep points" in text
    assert (out / "table.csv").exists() and "tabular" in (out / "table.tex").read_text()
    assert (out / "bars.png").stat().st_size > 1000
    assert report_main([str(tmp_path / "missing")]) == 2


def test_defense_variants_get_their_own_columns_and_reference(tmp_path):
    write_run(tmp_path, "0", "badnets", "dbd", 0.90, 0.01)
    write_run(tmp_path, "1", "badnets", "dbd", 0.80, 0.05)
    r = json.loads((tmp_path / "1" / "results.json").read_text())
    r["config"]["defense"]["variant"] = "ss_ce"
    (tmp_path / "1" / "results.json").write_text(json.dumps(r))
    t = paper_table(load_runs([tmp_path])[0])
    assert [c[0] for c in t.columns] == ["dbd", "dbd", "dbd[ss_ce]", "dbd[ss_ce]"]
    ref = with_reference(t, read_reference("dbd/table3"))
    assert ref.loc["badnets", ("dbd[ss_ce]", "ASR", "paper")] == pytest.approx(5.20)
    assert ref.loc["badnets", ("dbd", "ACC", "paper")] == pytest.approx(92.41)
    assert ref.loc["badnets", ("dbd[ss_ce]", "ACC", "delta")] == pytest.approx(80.0 - 82.25)


def test_reference_matched_on_poison_rate(tmp_path):
    for i, (rate, asr) in enumerate([(0.01, 0.5), (0.2, 0.9)]):
        write_run(tmp_path, str(i), "badnets", "none", 0.9, asr)
        r = json.loads((tmp_path / str(i) / "results.json").read_text())
        r["config"]["attack"]["poison_rate"] = rate
        (tmp_path / str(i) / "results.json").write_text(json.dumps(r))
    t = with_reference(paper_table(load_runs([tmp_path])[0]), read_reference("flows/table4"))
    assert t.loc[(0.01, "badnets"), ("none", "ASR", "paper")] == pytest.approx(99.96)
    assert t.loc[(0.2, "badnets"), ("none", "ASR", "delta")] == pytest.approx(90.0 - 100)


def test_one_rate_against_a_per_rate_reference_and_counts_stay_counts(tmp_path, capsys):
    write_run(tmp_path, "0", "badnets", "none", 0.9, 0.5)
    r = json.loads((tmp_path / "0" / "results.json").read_text())
    r["detection"] = {"fp": 39, "fn": 2, "tpr": 0.5}
    (tmp_path / "0" / "results.json").write_text(json.dumps(r))
    t = paper_table(load_runs([tmp_path])[0], ["asr", "fp", "fn", "tpr"], keep=("poison_rate",))
    assert t.loc[(0.1, "badnets"), ("none", "FP")] == 39 and t.loc[(0.1, "badnets"), ("none", "TPR")] == 50
    t = with_reference(t, read_reference("flows/table4"))
    assert t.loc[(0.1, "badnets"), ("none", "ASR", "paper")] == pytest.approx(
        read_reference("flows/table4")
        .query("poison_rate == 0.1 and attack == 'badnets' and defense == 'none'")["asr"]
        .item()
    )
    assert report_main([str(tmp_path), "--reference", "flows/table4"]) == 0


def test_a_defense_label_names_its_column_and_matches_the_ablation_reference(tmp_path):
    write_run(tmp_path, "0", "dirty_label_3to5", "ispl", 0.9, 0.5)
    r = json.loads((tmp_path / "0" / "results.json").read_text())
    r["config"]["defense"]["label"] = "ispl[alpha=0.25,components=8]"
    r["config"]["attack"]["poison_rate"] = 0.05
    (tmp_path / "0" / "results.json").write_text(json.dumps(r))
    t = paper_table(load_runs([tmp_path])[0], keep=("poison_rate",))
    t = with_reference(t, read_reference("ispl/ablation"))
    assert t.loc[(0.05, "dirty_label_3to5"), ("ispl[alpha=0.25,components=8]", "ACC", "paper")] == pytest.approx(92.8)


def test_median_over_scenarios_exact(tmp_path, capsys):
    """Three scenarios of one pair (same attack name): mean vs median, exact."""
    for i, (acc, tmr) in enumerate([(0.90, 0.02), (0.81, 0.90), (0.96, 0.01)]):
        write_run(tmp_path, str(i), "dirty_label_3to5", "ispl", acc, tmr, seed=0)
    runs = load_runs([tmp_path])[0]
    mean, median = paper_table(runs), paper_table(runs, agg="median")
    assert mean.loc["dirty_label_3to5", ("ispl", "ACC")] == pytest.approx(89.0)
    assert mean.loc["dirty_label_3to5", ("ispl", "ASR")] == pytest.approx(31.0)
    assert median.loc["dirty_label_3to5", ("ispl", "ACC")] == pytest.approx(90.0)
    assert median.loc["dirty_label_3to5", ("ispl", "ASR")] == pytest.approx(2.0)
    small = pd.DataFrame(
        {
            "dataset": ["d"] * 4,
            "model": ["m"] * 4,
            "poison_rate": [0.1] * 4,
            "attack": ["a"] * 4,
            "defense": ["none"] * 4,
            "acc": [0.1, 0.2, 0.4, 0.9],
        }
    )
    assert paper_table(small, ["acc"], agg="median").loc["a", ("none", "ACC")] == pytest.approx(30.0)  # even: midpoint
    assert paper_table(small, ["acc"]).loc["a", ("none", "ACC")] == pytest.approx(40.0)
    with pytest.raises(ValueError, match="agg"):
        paper_table(small, ["acc"], agg="max")
    assert report_main([str(tmp_path), "--agg", "median"]) == 0
    out = capsys.readouterr().out
    assert "median over runs" in out and "90.00" in out and "2.00" in out
