"""The ISPL paper's baselines (spectral, ac, itlm) end to end through run.py at trainer=tiny, on its
dirty-label scenario."""

import json

import pytest


def results(p):
    return json.loads((p.out_dir / "results.json").read_text())


@pytest.mark.parametrize("defense", ["spectral", "ac", "itlm"])
def test_baseline_runs_end_to_end(run_cli, defense):
    r = results(run_cli("attack=dirty_label", f"defense={defense}", "trainer=tiny"))
    d = r["detection"]
    assert d is not None and {"tpr", "fpr", "fp", "fn", "n_removed"} <= set(d)
    assert r["metrics"]["tmr"] is not None and "train/retrain" in r["timing"]
    if defense == "itlm":
        assert d["n_removed"] == 10  # round(0.04 x 256) each round
        assert {"train/itlm0", "train/itlm3"} <= set(r["timing"]) and "train/backdoored" not in r["timing"]
    else:
        assert "train/backdoored" in r["timing"]
    if defense == "spectral":
        assert d["n_removed"] == sum(r["defense_extra"]["removed_per_class"]) > 0


def test_spectral_on_a_named_layer_of_resnet32(run_cli):
    r = results(
        run_cli(
            "attack=dirty_label",
            "defense=spectral",
            "model=resnet32",
            "defense.layer=backbone.layer3.1",
            "trainer=tiny",
        )
    )
    extra = r["defense_extra"]
    assert extra["layer"] == "backbone.layer3.1" and r["detection"]["n_removed"] > 0
    # the whole 64-channel map, flattened (the default; activations=pool gives the 64 means)
    assert extra["activations"] == "flatten" and extra["feature_dim"] > 64 and extra["feature_dim"] % 64 == 0
    assert extra["expected_poison_rate"] == 0.1 and abs(extra["removed_share"] - 0.15) < 1e-9


def test_a_bad_layer_fails_fast_naming_the_valid_ones(run_cli):
    p = run_cli("defense=ac", "defense.layer=backbone.nope", "trainer=tiny", check=False)
    assert p.returncode == 2 and "defense.layer" in p.stderr and "backbone.body" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout and not (p.out_dir / "results.json").exists()
