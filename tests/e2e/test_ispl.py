"""ISPL + boosting end to end through run.py at trainer=tiny, and its resume."""

import json


def test_ispl_runs_end_to_end_on_a_dirty_label_scenario(run_cli):
    args = (
        "attack=dirty_label",
        "defense=ispl",
        "defense.runs=2",
        "defense.components=2",
        "defense.self_train.rounds=2",
        "trainer=tiny",
    )
    p = run_cli(*args)
    r = json.loads((p.out_dir / "results.json").read_text())
    d, extra = r["detection"], r["defense_extra"]
    assert {"fp", "fn", "tpr", "fpr"} <= set(d) and r["metrics"]["tmr"] is not None
    assert len(extra["component_sizes"]) == 2 and extra["learners"] == sum(map(len, extra["component_sizes"]))
    assert len(extra["kept_per_self_training_round"]) <= 2
    assert (p.out_dir / "score_histogram.png").exists()
    # the components are checkpointed: a second run over the same cache trains no weak learner
    cache = p.out_dir.parent / "cache"
    again = run_cli(*args, cache=cache)
    assert "train/ispl_g" not in json.loads((again.out_dir / "results.json").read_text())["timing"]
