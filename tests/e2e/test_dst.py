"""D-ST and D-BR (Chen, Wu, Wang, NeurIPS 2022) end to end through run.py at trainer=tiny, and its three paper tables:
every sweep value composes, the references are well-formed, and a slice of each runs and reports."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.conftest import sweep_params as sweep

TABLES = {"dst/table1": 7 * 4, "dbr/table2": 7 * 7, "dst/table3": 7 * 3}
ATTACKS = {"badnets", "badnets_all2all", "trojan", "blend_signal", "blended", "sig", "lc"}


def results(path):
    return json.loads(path.read_text())


def test_dbr_then_dst_share_one_split_and_report_it(run_cli, tmp_path):
    cache = tmp_path / "shared_cache"
    p = run_cli("defense=dbr", "trainer=tiny", cache=cache)
    r = results(p.out_dir / "results.json")
    d, extra = r["detection"], r["defense_extra"]
    # 256 samples: floor(0.2 * 256) = 51 clean, floor(0.05 * 256) = 12 poisoned
    assert (extra["n_clean"], extra["n_poisoned"], extra["n_uncertain"]) == (51, 12, 193)
    assert d["n_flagged"] == 12 and d["n_trusted"] == 51 and 0 <= d["trusted_purity"] <= 1
    assert d["tp"] + d["fn"] == r["data"]["n_poisoned"]
    assert {"train/sd_train", "train/sd_separate", "train/backdoored", "train/dbr"} <= set(r["timing"])
    assert (p.out_dir / "score_histogram.png").stat().st_size > 1000  # the FCT histogram (Fig. 3)
    q = run_cli("defense=dst", "trainer=tiny", cache=cache)
    s = results(q.out_dir / "results.json")
    assert "cache: reused sd_scores" in (q.out_dir / "run.log").read_text()
    assert "train/sd_train" not in s["timing"] and {"train/dst_encoder", "train/dst_head"} <= set(s["timing"])
    assert s["detection"]["n_trusted"] == 51 and s["detection"]["tp"] == d["tp"]  # the same split
    # a lambda_p sweep point reuses the encoder
    lam = run_cli("defense=dst", "trainer=tiny", "defense.lambda_p=0.1", cache=cache)
    assert "cache: reused dst_encoder" in (lam.out_dir / "run.log").read_text()


@pytest.mark.parametrize("defense", ["dst/baseline1", "dst/s_ctl", "dbr/unlearn", "dbr/spectral", "dbr/lga"])
def test_ablations_run(run_cli, defense):
    r = results(run_cli(f"defense={defense}", "trainer=tiny").out_dir / "results.json")
    assert r["metrics"]["acc"] is not None
    assert (r["detection"] is None) == (defense == "dst/baseline1")  # the baselines use no split


def test_dbr_sce_metric_uses_the_ssl_backbone(run_cli):
    p = run_cli("defense=dbr/sce", "trainer=tiny")
    assert {"train/ssl", "train/sd_sce"} <= set(results(p.out_dir / "results.json")["timing"])


def test_all2all_square_sits_at_rows_and_cols_28_to_30(compose):
    import torch
    from hydra.utils import instantiate

    attack = instantiate(compose("attack=dst/badnets_all2all").attack, num_classes=10)
    attack.check(10, (3, 32, 32))
    out = attack.apply(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert (out[0].sum(0) > 0).nonzero().tolist() == [[r, c] for r in range(28, 31) for c in range(28, 31)]
    assert int(out.max()) == 255 and attack.target_label(torch.tensor([3, 9])).tolist() == [4, 0]


@pytest.mark.parametrize("table", list(TABLES))
def test_every_sweep_value_composes(compose, table):
    params = sweep(table)
    assert len(params["attack"]) * len(params["defense"]) == TABLES[table]
    for attack in params["attack"]:
        for defense in params["defense"]:
            cfg = compose(f"experiment={table}", f"attack={attack}", f"defense={defense}")
            assert cfg.model._target_.endswith("ResNet18") and cfg.trainer.name == "dbr_resnet18"
            assert cfg.trainer.optimizer.lr == 0.01 and cfg.trainer.max_epochs == 200
            assert cfg.attack.target == 0 and cfg.defense.name == defense.split("/")[0]
            assert cfg.attack.name in ATTACKS
            if cfg.attack.name in ("sig", "lc"):  # the code's rate: a share of the target class
                assert cfg.attack.poison_rate == 0.1
            if cfg.defense.name == "dst":
                assert cfg.defense.encoder.epochs == 200 and cfg.defense.sd.clean_ratio == 0.2


@pytest.mark.parametrize("table", list(TABLES))
def test_reference_csvs_are_well_formed(table):
    ref = pd.read_csv(ROOT / "backdoor_bench" / "reference" / f"{table}.csv", comment="#")
    assert set(ref.attack) == ATTACKS and not ref.duplicated(["attack", "defense"]).any()
    assert ref.acc_nontarget.between(58, 95).all() and ref.asr.between(0, 100).all()
    labels = {
        "dst/table1": {"baseline1", "baseline2", "dbd", "dst"},
        "dst/table3": {"ctl", "s_ctl", "dst"},
        "dbr/table2": {"none", "ft", "anp", "nad", "mcr", "abl", "dbr"},
    }[table]
    assert set(ref.defense) == labels and len(ref) == 7 * len(labels)
    # the paper's Avg rows, recomputed from the transcription; Table 3's SS-CTL row is Table 1's D-ST
    avg = {
        "dst/table1": {
            "baseline1": (84.65, 45.75),
            "baseline2": (93.43, 93.73),
            "dbd": (93.53, 96.40),
            "dst": (91.66, 1.21),
        },
        "dbr/table2": {
            "none": (92.46, 97.29),
            "ft": (90.05, 77.41),
            "anp": (84.91, 14.30),
            "nad": (83.69, 16.93),
            "mcr": (92.92, 30.05),
            "abl": (80.21, 25.75),
            "dbr": (92.42, 0.31),
        },
        "dst/table3": {"dst": (91.66, 1.21)},
    }[table]
    for name, (acc, asr) in avg.items():
        rows = ref[ref.defense == name]
        assert rows.acc_nontarget.mean() == pytest.approx(acc, abs=0.01), name
        assert rows.asr.mean() == pytest.approx(asr, abs=0.01), name


@pytest.mark.parametrize(
    "table,attacks,defenses",
    [
        ("dst/table1", "dst/badnets", "dst/baseline1,dst/baseline2,dbd,dst"),
        ("dbr/table2", "dst/badnets,blend_signal", "none,dbr"),
        ("dst/table3", "blend_signal", "dst/ctl,dst/s_ctl,dst"),
    ],
)
def test_table_slice_runs_at_tiny_scale_and_reports(run_cli, table, attacks, defenses):
    """A slice of each table on digits (the 8x8 images fit the paper's triggers except all2all's square at 28)."""
    p = run_cli(
        f"experiment={table}",
        f"attack={attacks}",
        f"defense={defenses}",
        "trainer=tiny",
        "dataset=digits",
        "model=small_cnn",
        multirun=True,
        timeout=1200,
    )
    n = len(attacks.split(",")) * len(defenses.split(","))
    assert len(list(p.out_dir.rglob("results.json"))) == n and not list(p.out_dir.rglob("error.json"))
    rep = subprocess.run(
        [
            sys.executable,
            "scripts/report.py",
            str(p.out_dir),
            "--reference",
            table,
            "--force",
            "--metrics",
            "acc_nontarget,asr",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert rep.returncode == 0, rep.stderr
    assert "paper" in rep.stdout
    assert {"dst/table1": "92.77", "dbr/table2": "92.83", "dst/table3": "93.59"}[table] in rep.stdout


@pytest.mark.slow
def test_diagnose_sd_ranking_scores_every_tau(tmp_path):
    """scripts/diagnose.py --sd-ranking: FCT's ranking under each tau, against the truth, outside run.py."""
    out = tmp_path / "ranking.jsonl"
    cmd = [sys.executable, "scripts/diagnose.py", "--sd-ranking", "--out", str(out)]
    subprocess.run([*cmd, "defense=dbr/digits", "attack=badnets", "trainer=tiny"], cwd=ROOT, check=True, timeout=600)
    head, *rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert head["sd_model"] == "the run's model" and 0 <= head["acc"] <= 1 and 0 <= head["asr"] <= 1
    assert [(r["degrees"], r["draws"]) for r in rows] == [(180, 1), (180, 8), (15, 1), (15, 8), (0, 1), (0, 8)]
    assert all(0 <= r["auroc"] <= 1 and 0 <= r["top_precision"] <= 1 for r in rows)
