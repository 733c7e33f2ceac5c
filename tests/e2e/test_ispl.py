"""ISPL + boosting end to end through run.py at trainer=tiny, its resume, and a corrupt checkpoint."""

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
    assert r["resumed"] == []
    # the components are checkpointed: a second run over the same cache trains no weak learner,
    # and its results.json says what it resumed and reused
    cache = p.out_dir.parent / "cache"
    (checkpoint,) = (cache / "defense_stage").rglob("partial.ckpt")
    again = json.loads((run_cli(*args, cache=cache).out_dir / "results.json").read_text())
    assert "train/ispl_g" not in again["timing"]
    assert again["resumed"] == [{"stage": "ispl_components", "checkpoint": str(checkpoint)}]
    assert again["cache"] and all(e["reused"] for e in again["cache"])  # the poisoned set
    assert again["defense_extra"]["component_sizes"] == extra["component_sizes"]
    # a truncated component checkpoint (a crash mid-write on a filesystem without atomic rename):
    # the rerun logs it, deletes it, extracts the components again and finishes
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    third = run_cli(*args, cache=cache)
    r3 = json.loads((third.out_dir / "results.json").read_text())
    assert "train/ispl_g" in r3["timing"] and r3["resumed"] == []
    assert r3["defense_extra"]["component_sizes"] == extra["component_sizes"]
    log = (third.out_dir / "run.log").read_text()
    assert f"stage checkpoint {checkpoint} is unusable" in log and "deleting it" in log
    assert checkpoint.exists()  # written again, whole
