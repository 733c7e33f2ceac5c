"""The post-training repairs (ft, fp, nad, nc) end to end through run.py at trainer=tiny, as one
multirun: each point writes results.json with metrics and its defense's own figures."""

import json


def test_repairs_run_end_to_end(run_cli):
    p = run_cli("defense=ft,fp,nad,nc", "trainer=tiny", multirun=True)
    runs = {json.loads(path.read_text())["choices"]["defense"]: path for path in p.out_dir.rglob("results.json")}
    assert sorted(runs) == ["fp", "ft", "nad", "nc"], p.stdout[-2000:]
    r = {name: json.loads(path.read_text()) for name, path in runs.items()}
    for name, res in r.items():
        assert set(res["metrics"]) >= {"acc", "asr"} and 0 <= res["metrics"]["acc"] <= 1, name
        assert res["config"]["defense"]["clean_fraction"] == 0.05 and res["detection"] is None
    assert r["ft"]["defense_extra"] == {"n_clean": 13, "epochs": 2}  # round(0.05 x 256); the tiny cap
    fp = r["fp"]["defense_extra"]
    assert fp["layer"] == "backbone.body.6" and fp["channels"] == 128 and len(fp["pruned_channels"]) == fp["pruned"]
    assert r["nad"]["defense_extra"]["layers"] == ["backbone.body.1", "backbone.body.4", "backbone.body.6"]
    assert {"train/nad_teacher", "train/nad", "train/ft", "train/fp"} <= set().union(*(x["timing"] for x in r.values()))
    nc = r["nc"]["defense_extra"]
    assert len(nc["anomaly_index"]) == len(nc["mask_norms"]) == 10 and nc["steps"] == [2] * 10
    assert nc["mitigated"] == bool(nc["flagged"]) and ("train/nc_unlearn" in r["nc"]["timing"]) == nc["mitigated"]
    assert (runs["nc"].parent / "nc_triggers.png").stat().st_size > 5000
