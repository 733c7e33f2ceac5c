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
    ref = "backdoorbench/cifar10_preactresnet18"
    assert report_main([str(runs_dir), "--out", str(out), "--reference", ref, "--force"]) == 0
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
    assert report_main([str(tmp_path), "--reference", "flows/table4", "--force"]) == 0


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
        set_config(tmp_path, str(i), attack__scenario_seed=i)  # three trigger draws: three runs
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


def set_config(root, name, **changes):
    """Change config values of run `name` (dotted keys, e.g. `attack.poison_rate`) or its data name."""
    f = root / name / "results.json"
    r = json.loads(f.read_text())
    for key, value in changes.items():
        if key == "dataset":
            r["data"]["name"] = value
            continue
        node, *path = key.split("__")
        target = r["config"][node]
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    f.write_text(json.dumps(r))


def rate_sweep(root):
    """BadNets on cifar10/ResNet18 at 5% (2 seeds) and 10% (1 seed), the flows paper's setting."""
    for i, (rate, seed, acc, asr) in enumerate([(0.05, 0, 0.90, 0.50), (0.05, 1, 0.92, 0.70), (0.1, 0, 0.91, 0.9)]):
        write_run(root, str(i), "badnets", "none", acc, asr, seed=seed)
        set_config(root, str(i), dataset="cifar10", attack__poison_rate=rate, model___target_="x.ResNet18")
        r = json.loads((root / str(i) / "results.json").read_text())
        r["config"]["model"].pop("width")
        (root / str(i) / "results.json").write_text(json.dumps(r))


def test_mean_std_and_n_per_cell(runs_dir, capsys):
    from backdoor_bench.report.table import cell_stats

    mean, std, n = cell_stats(load_runs([runs_dir])[0])
    assert mean.loc["badnets", ("none", "ACC")] == pytest.approx(91.0)
    assert std.loc["badnets", ("none", "ACC")] == pytest.approx(2**0.5)  # 90, 92: sample std
    assert n.loc["badnets", ("none", "ASR")] == 2 and n.loc["badnets", ("dbd", "ASR")] == 1
    assert pd.isna(std.loc["badnets", ("dbd", "ASR")])
    assert report_main([str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "91.00 ± 1.41 (n=2)" in out and "85.00 (n=1)" in out
    assert "(" not in out.split("| attack")[1].split("\n")[2].split("|")[1]  # the row label is no tuple


def test_the_same_run_found_twice_counts_once(runs_dir, tmp_path, capsys):
    copy = tmp_path / "copy" / "0"
    copy.mkdir(parents=True)
    (copy / "results.json").write_text((runs_dir / "0" / "results.json").read_text())
    runs, _ = load_runs([runs_dir, runs_dir / "0", tmp_path / "copy"], warn=print)
    assert len(runs) == 4  # the folder given twice and the copied config are one run each
    assert "is the same run as" in capsys.readouterr().out
    (copy / "results.json").unlink()
    write_run(tmp_path / "copy", "1", "badnets", "none", 0.5, 0.5, seed=7)  # another seed is another run
    assert len(load_runs([runs_dir, tmp_path / "copy"])[0]) == 5


def test_unknown_metrics_are_one_line_exit_2(runs_dir, capsys):
    for metrics in ("nosuch", "acc,nosuch"):
        assert report_main([str(runs_dir), "--metrics", metrics]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "nosuch not in these runs" in err


def test_reference_of_another_setting_is_refused_unless_forced(runs_dir, tmp_path, capsys):
    ref = "backdoorbench/cifar10_preactresnet18"
    assert read_reference(ref).attrs["setting"]["model"] == "PreActResNet18-w64"
    assert report_main([str(runs_dir), "--reference", ref]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset digits (4 runs)" in err and "model SmallCNN-w32" in err
    assert "--force" in err
    out = tmp_path / "forced"
    assert report_main([str(runs_dir), "--reference", ref, "--force", "--out", str(out)]) == 0
    assert "note: --force: --reference" in capsys.readouterr().out
    assert (out / "bars.png").stat().st_size > 1000
    rates = tmp_path / "rates"
    rate_sweep(rates)
    assert report_main([str(rates), "--reference", "dbd/table1"]) == 2  # DBD: 5% only
    assert "badnets at poison_rate 0.1 (1 run)" in capsys.readouterr().err
    assert report_main([str(rates), "--reference", "flows/table4"]) == 0  # per-rate rows: 5% and 10% match
    bad = tmp_path / "bad.csv"
    bad.write_text("# setting: dataset cifar10\nattack,defense,acc\nbadnets,none,90\n")
    with pytest.raises(ValueError, match="key=value"):
        read_reference(str(bad))


def test_line_plot_against_a_swept_number(tmp_path, capsys):
    rate_sweep(tmp_path / "runs")
    out = tmp_path / "out"
    args = [str(tmp_path / "runs"), "--reference", "flows/table4", "--plot", "line", "--out", str(out)]
    assert report_main([*args, "--x", "attack.poison_rate"]) == 0
    assert (out / "line.png").stat().st_size > 5000
    csv = pd.read_csv(out / "table.csv", header=[0, 1, 2], index_col=[0, 1])
    assert csv.loc[(0.05, "badnets"), ("none", "ASR", "std")] == pytest.approx(200**0.5)  # 50, 70
    assert csv.loc[(0.05, "badnets"), ("none", "ASR", "n")] == 2
    capsys.readouterr()
    assert report_main([*args, "--x", "attack.name"]) == 2
    assert "--x attack.name is not a number" in capsys.readouterr().err


def test_bar_chart_labels_and_reference_markers(tmp_path):
    from backdoor_bench.report.plots import bar_chart, row_label

    assert row_label((0.05, "badnets"), ["poison_rate", "attack"]) == "badnets, poison_rate 0.05"
    assert row_label("badnets", ["attack"]) == "badnets"
    rate_sweep(tmp_path / "runs")
    from backdoor_bench.report.table import cell_stats

    table, std, _ = cell_stats(load_runs([tmp_path / "runs"])[0], ["asr"], keep=("poison_rate",))
    table = with_reference(table, read_reference("flows/table4"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    captured = {}
    real = plt.subplots

    def spy(*a, **k):
        fig, ax = real(*a, **k)
        captured["ax"] = ax
        return fig, ax

    plt.subplots = spy
    try:
        bar_chart(table, tmp_path / "bars.png", std=std)
    finally:
        plt.subplots = real
    ax = captured["ax"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["badnets, poison_rate 0.05", "badnets, poison_rate 0.1"]
    assert ax.get_title() == "ASR per attack and defense"  # names the metric plotted, not ACC / ASR
    paper = [c for c in ax.collections if c.get_label() == "paper"][0]
    assert paper.get_offsets()[:, 1].tolist() == [100.0, 100.0]  # flows Table 4: BadNets, none, 5% and 10%
