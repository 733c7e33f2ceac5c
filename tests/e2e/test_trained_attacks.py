"""Attacks that train the backdoored model themselves (IAD, LIRA) at trainer=tiny: the defenses get
the attack's model (a post-training defense) or its stored set (a cleansing defense), the model
and its generator are trained once per sweep and reused, results.json says what the stored set
holds, and the gallery shows the trained generator's trigger."""

import json

from scripts import gallery


def test_defenses_run_on_the_attacks_model_and_stored_set(run_cli, tmp_path, capsys):
    p = run_cli("trainer=tiny", "attack=iad,lira", "defense=none,ft,spectral", multirun=True)
    runs = {}
    for f in p.out_dir.rglob("results.json"):
        r = json.loads(f.read_text())
        runs[(r["config"]["attack"]["name"], r["config"]["defense"]["name"])] = r
    assert len(runs) == 6
    for (attack, defense), r in runs.items():
        d = r["data"]
        assert d["train_time_poisoning"] is True and d["stored_set"]
        assert (d["n_poisoned"], d["n_cover"]) == ((26, 26) if attack == "iad" else (0, 0))
        kinds = {e["kind"]: e["reused"] for e in r["cache"]}
        assert kinds["attack_model"] is (defense != "none"), (attack, defense)  # trained by the first point only
        assert "model" not in kinds or defense == "spectral"  # only the cleansing defense trains another model
        assert r["detection"] is None if defense != "spectral" else r["detection"] is not None
    # the post-training defense started from the attack's model: without defense it is reported as is
    assert runs[("iad", "none")]["timing"]["attack_training"] > 0
    out = tmp_path / "sheet.png"
    rc = gallery.main(
        ["trainer=tiny", f"paths.cache_dir={tmp_path / 'cache'}", "--attacks", "iad,lira", "--out", str(out)]
    )
    assert rc == 0 and "gallery: 2 rows (2 attacks)" in capsys.readouterr().out
