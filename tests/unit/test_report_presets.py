"""Presets are reported under their full name (`attack=dst/badnets` as `dst/badnets`) and still
meet the reference rows that name them by their config name; older results.json files (no
`choices`) read as before."""

import json

import pytest

from backdoor_bench.report.table import base_names, load_runs, paper_table, read_reference, with_reference


def write(root, name, attack, defense, acc, choices=None):
    (root / name).mkdir(parents=True)
    r = {
        "metrics": {"acc": acc, "asr": 0.5},
        "config": {"attack": {"name": attack, "poison_rate": 0.1}, "defense": {"name": defense}, "seed": 0},
        "data": {"name": "digits"},
        **({"choices": choices} if choices else {}),
    }
    (root / name / "results.json").write_text(json.dumps(r))


def test_presets_by_full_name_matched_to_the_reference_by_config_name(tmp_path):
    write(tmp_path, "0", "badnets", "nad", 0.9, {"attack": "dst/badnets", "defense": "nad/dbd"})
    write(tmp_path, "1", "badnets", "none", 0.8, {"attack": "badnets", "defense": "none"})
    write(tmp_path, "2", "blended", "none", 0.7)  # an older results.json: no choices
    runs, _ = load_runs([tmp_path])
    assert sorted(zip(runs["attack"], runs["defense"])) == [
        ("badnets", "none"),
        ("blended", "none"),
        ("dst/badnets", "nad/dbd"),
    ]
    assert base_names(runs) == {"dst/badnets": "badnets", "nad/dbd": "nad"}
    ref = tmp_path / "ref.csv"
    ref.write_text("attack,defense,acc\nbadnets,nad,85.0\nbadnets,none,81.0\nblended,none,70.5\ndst/badnets,none,1.0\n")
    t = with_reference(paper_table(runs, ["acc"]), read_reference(str(ref)), base_names(runs))
    assert t.loc["dst/badnets", ("nad/dbd", "ACC", "paper")] == pytest.approx(85.0)
    assert t.loc["badnets", ("none", "ACC", "paper")] == pytest.approx(81.0)
    assert t.loc["blended", ("none", "ACC", "delta")] == pytest.approx(70.0 - 70.5)
    assert t.loc["dst/badnets", ("none", "ACC", "paper")] == pytest.approx(1.0)  # its own row comes first
