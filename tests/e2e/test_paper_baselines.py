"""The paper tables' baseline defenses through their sweeps at trainer=tiny: every sweep point
composes, and one attack against every defense of each table runs and is reported beside the
paper's numbers (the attacks run against the papers' own defenses in test_dbd, test_dst and
test_cleansers)."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.conftest import sweep_params as sweep

TABLES = {
    "dbd/table1": {"none", "dbd", "nc", "nad", "dpsgd", "shrinkpad"},
    "dbr/table2": {"none", "dbr", "ft", "nad", "anp", "mcr", "abl"},
    "flows/table1": {"none", "flow_relabel", "nad", "abl", "dbd", "asd"},
    "backdoorbench/cifar10": {
        *("none", "ft", "fp", "nad", "nc", "anp", "mcr", "i_bau", "clp", "abl", "ac", "spectral", "dbd", "dst")
    },
    "backdoorbench/cpu": {
        *("none", "ft", "fp", "nad", "nc", "anp", "mcr", "i_bau", "clp", "shrinkpad", "strip", "abl", "dpsgd", "asd")
    },
}


@pytest.mark.parametrize("table", list(TABLES))
def test_every_sweep_point_composes_with_the_tables_defenses(compose, table):
    params = sweep(table)
    names = set()
    for attack in params["attack"]:
        for defense in params["defense"]:
            cfg = compose(f"experiment={table}", f"attack={attack}", f"defense={defense}")
            names.add(cfg.defense.name)
    assert names == TABLES[table]


@pytest.mark.parametrize("table", ["dbd/table1", "dbr/table2", "flows/table1"])
def test_one_attack_against_every_defense_of_the_table(run_cli, tmp_path, table):
    attack = sweep(table)["attack"][0]
    defenses = [d for d in sweep(table)["defense"] if d.split("/")[0] not in ("dbd", "dbr", "flow_relabel")]
    p = run_cli(
        f"experiment={table}",
        f"attack={attack}",
        f"defense={','.join(defenses)}",
        "trainer=tiny",
        "dataset=digits",
        "model=small_cnn",
        multirun=True,
        timeout=1200,
    )
    assert len(list(p.out_dir.rglob("results.json"))) == len(defenses) and not list(p.out_dir.rglob("error.json"))
    metrics = "acc_nontarget,asr" if table == "dbr/table2" else "acc,asr"
    rep = subprocess.run(
        [sys.executable, "scripts/report.py", str(p.out_dir), "--reference", table, "--metrics", metrics],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert rep.returncode == 0, rep.stderr
    assert "paper" in rep.stdout
    for d in defenses:
        assert f" {d.split('/')[0]} ASR ours " in rep.stdout, (d, rep.stdout)
