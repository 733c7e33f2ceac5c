"""W&B offline runs read back from their files (config, summary, images, the verdict table), the
quiet console, the result line's detection figures and sweep point folders that name their
values: one two-point sweep at trainer=tiny, no network (offline by default, W&B's folders in tmp)."""

import json

import pytest

from tests.conftest import run_py
from tests.wandb_offline import read_offline_run

POINTS = [
    "0_attack.poison_rate=0.05,defense=spectral,trainer=tiny",
    "1_attack.poison_rate=0.1,defense=spectral,trainer=tiny",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wandb")
    env = {f"WANDB_{k}_DIR": str(tmp / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}
    # W&B as a user has it: offline by the config alone (WANDB_MODE unset), silent without
    # WANDB_SILENT; an attempt to go online would fail at once on a dead local address
    env.update(WANDB_DIR=str(tmp / "wandb"), WANDB_MODE=None, WANDB_SILENT=None, WANDB_API_KEY=None)
    env.update(WANDB_BASE_URL="http://127.0.0.1:9")
    args = ("attack.poison_rate=0.05,0.1", "defense=spectral", "trainer=tiny", "logger=wandb")
    return run_py(tmp / "sweep", tmp / "cache", *args, multirun=True, env=env)


def test_point_folders_name_their_swept_values(sweep):
    assert sorted(p.name for p in sweep.out_dir.iterdir() if p.is_dir()) == POINTS


def test_each_point_is_an_offline_wandb_run_with_config_summary_images_and_table(sweep):
    dirs = [next((sweep.out_dir / p / "wandb").glob("offline-run-*")) for p in POINTS]
    runs = [read_offline_run(d) for d in dirs]
    assert [r["name"] for r in runs] == [
        "digits-badnets-spectral-s0 attack.poison_rate=0.05,trainer=tiny",
        "digits-badnets-spectral-s0 attack.poison_rate=0.1,trainer=tiny",
    ]
    assert {r["group"] for r in runs} == {str(sweep.out_dir)}  # the sweep
    for point, run_dir, r, rate in zip(POINTS, dirs, runs, (0.05, 0.1)):
        c = r["config"]
        assert c["attack"]["poison_rate"] == rate and c["attack"]["name"] == "badnets" and c["seed"] == 0
        assert c["choices"] == {
            "dataset": "digits",
            "model": "small_cnn",
            "attack": "badnets",
            "defense": "spectral",
            "trainer": "tiny",
        }
        assert c["trainer"]["max_epochs"] == 2 and f"attack.poison_rate={rate}" in c["overrides"]
        results = json.loads((sweep.out_dir / point / "results.json").read_text())
        s = r["summary"]
        assert s["metrics/acc"] == results["metrics"]["acc"] and s["detection/tpr"] == results["detection"]["tpr"]
        assert {"metrics/asr", "detection/fpr", "detection/precision", "detection/kept_poison_rate"} <= set(s)
        images = sorted(f.split("/")[-1].rsplit("_", 2)[0] for f in r["files"] if f.startswith("media/images/"))
        assert images == ["score_histogram", "trigger_gallery"]
        table_file = next(f for f in r["files"] if f.startswith("media/table/verdict_"))
        assert s["verdict"]["_type"] == "table-file" and s["verdict"]["path"] == table_file
        table = json.loads((run_dir / "files" / table_file).read_text())
        assert table["columns"] == [
            "index",
            "score",
            "kept",
            "label",
            "verdict_label",
            "poisoned",
            "cover",
            "true_label",
        ]
        assert [row[0] for row in table["data"]] == list(range(256))
        assert sum(row[5] for row in table["data"]) == results["data"]["n_poisoned"]
        assert sum(not row[2] for row in table["data"]) == results["detection"]["n_removed"]


def test_the_console_is_quiet_and_run_log_keeps_the_details(sweep):
    console = sweep.stdout + sweep.stderr
    assert not [line for line in console.splitlines() if line.startswith("wandb:")]
    for noise in ("Tip:", "deprecated", "GPU available", "Trainer.fit` stopped"):
        assert noise not in console, noise
    log = (sweep.out_dir / POINTS[0] / "run.log").read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log and "GPU available" in log and "Tip:" not in log
    assert "epoch 2/2" in sweep.stdout  # the per-epoch lines stay on the console too


def test_the_result_line_carries_the_detection_figures(sweep):
    lines = [line for line in sweep.stdout.splitlines() if line.startswith("result ")]
    assert len(lines) == 2
    for line, point in zip(lines, POINTS):
        d = json.loads((sweep.out_dir / point / "results.json").read_text())["detection"]
        shown = json.loads(line.split("  detection ")[1].split("  (")[0])
        assert shown == {k: round(d[k], 4) for k in ("tpr", "fpr", "precision", "kept_poison_rate")}
        assert line.startswith("result digits badnets spectral: {")
