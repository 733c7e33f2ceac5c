"""The model-repair defenses (ANP, MCR, I-BAU, CLP) end to end through run.py at trainer=tiny, as one
multirun: each point writes results.json with metrics, its stages' timings and its own figures."""

import json


def test_repair_defenses_run_end_to_end(run_cli):
    p = run_cli("trainer=tiny", "defense=anp,mcr,i_bau,clp", multirun=True)
    runs = {
        json.loads(f.read_text())["config"]["defense"]["name"]: json.loads(f.read_text())
        for f in p.out_dir.rglob("results.json")
    }
    assert set(runs) == {"anp", "mcr", "i_bau", "clp"}, sorted(p.out_dir.rglob("*.json"))
    for name, r in runs.items():
        assert {"acc", "acc_nontarget", "asr", "ra"} <= set(r["metrics"]), name
        assert 0.0 <= r["metrics"]["acc"] <= 1.0 and r["detection"] is None, name
    anp, mcr, ibau, clp = (runs[k]["defense_extra"] for k in ("anp", "mcr", "i_bau", "clp"))
    # small_cnn's BatchNorm neurons: 32 + 32 + 64 + 64 + 128; tiny caps ANP at 2 epochs of 2 updates
    assert anp["n_neurons"] == 320 and anp["iterations"] == 4 and anp["n_clean"] == 3  # round(0.01 x 256)
    assert anp["n_pruned"] == sum(anp["pruned_per_layer"].values()) and 0 <= anp["mask_mean"] <= 1
    assert mcr["t"] == 0.3 and mcr["finetune_epochs"] == 2 and mcr["curve_epochs"] == 2
    assert ibau["rounds"] == 2 and len(ibau["delta_norms"]) == 2 and ibau["n_clean"] == 13  # round(0.05 x 256)
    assert all(0 < n <= 10.0 + 1e-4 for n in ibau["delta_norms"])  # within the L2 ball
    assert clp["n_channels"] == 320 and clp["n_pruned"] == sum(clp["pruned_per_layer"].values())
    assert {"train/anp"} <= set(runs["anp"]["timing"]) and {"train/i_bau"} <= set(runs["i_bau"]["timing"])
    assert {"train/mcr_finetune", "train/mcr_curve"} <= set(runs["mcr"]["timing"])
    assert not any(k.startswith("train/") and k != "train/backdoored" for k in runs["clp"]["timing"])  # data-free
