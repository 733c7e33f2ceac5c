"""The paper tables at trainer=tiny on digits: every sweep point composes (and, for the tables
whose e2e tests run a slice, validates), and one attack against every defense of each table runs
and is reported beside the paper's numbers (the papers' other attacks run against their own
defenses in test_dbd, test_dst and test_cleansers)."""

import pytest

from tests.conftest import TINY_DIGITS, report_table, run_table, sweep_points
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


# the defenses of a table that run against its first attack here: all but those another table's
# slice runs (dbr: test_dst.py; dbd: dbd/table1 here)
ELSEWHERE = {"dbd/table1": (), "dbr/table2": ("dbr",), "flows/table1": ("dbd",)}


@pytest.mark.parametrize("table", list(ELSEWHERE))
def test_one_attack_against_every_defense_of_the_table(tmp_path, table):
    attack = sweep(table)["attack"][0]
    defenses = [d for d in sweep(table)["defense"] if d.split("/")[0] not in ELSEWHERE[table]]
    p = run_table(tmp_path / "multirun", tmp_path / "cache", table, attack=attack, defense=",".join(defenses))
    metrics = "acc_nontarget,asr" if table == "dbr/table2" else "acc,asr"
    rep = report_table(p.out_dir, "--reference", table, "--force", "--metrics", metrics)
    assert "paper" in rep
    for d in defenses:  # a preset is shown under its full name (nad/dbd), a labelled one under its label
        assert any(f" {name} ASR ours " in rep for name in (d, d.split("/")[0])), (d, rep)


# the tables whose e2e tests run a slice (here, test_dbd.py, test_cleansers.py); core/attacks runs
# whole in test_runs.py
SLICED = ["dbd/table1", "dbd/table3", "flows/table1", "flows/table3", "flows/table4", "ssl_knn/cifar10"]


@pytest.mark.parametrize("table", SLICED)
def test_every_point_of_a_sliced_table_validates_at_tiny_scale(compose, table):
    """The points a table's e2e slice leaves out still compose at TINY_DIGITS and pass every check
    a run makes before it loads data (`validate`)."""
    from backdoor_bench.validate import validate

    for point in sweep_points(table):
        overrides = [f"{k}={v}" for k, v in point.items()]
        cfg = compose(f"experiment={table}", *overrides, *TINY_DIGITS, "cache.enabled=false")
        attack, defense = validate(cfg)
        assert defense.name == point["defense"].split("/")[0], point
