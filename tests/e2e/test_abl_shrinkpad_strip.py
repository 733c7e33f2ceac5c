"""ABL, ShrinkPad and STRIP end to end through run.py at trainer=tiny, in one multirun."""

import json


def test_abl_shrinkpad_and_strip_run_end_to_end(run_cli):
    p = run_cli("defense=abl,shrinkpad,strip", "trainer=tiny", "defense.clean_fraction=0.1", multirun=True)
    runs = {
        json.loads(f.read_text())["config"]["defense"]["name"]: json.loads(f.read_text())
        for f in p.out_dir.rglob("results.json")
    }
    assert set(runs) == {"abl", "shrinkpad", "strip"}
    abl = runs["abl"]
    assert abl["detection"]["n_removed"] == round(0.01 * 256) and abl["input_detection"] is None
    assert {"train/abl_isolation", "train/abl_finetune", "train/abl_unlearn"} <= set(abl["timing"])
    assert runs["shrinkpad"]["defense_extra"]["shrink_pixels"] == 2  # 10% of 16 pixels, rounded
    d = runs["strip"]["input_detection"]
    assert {"tpr", "fpr", "auroc", "asr_passed", "n_clean", "n_triggered"} <= set(d) and d["n_clean"] == 128
    assert runs["strip"]["detection"] is None and runs["strip"]["metrics"]["acc"] is not None
