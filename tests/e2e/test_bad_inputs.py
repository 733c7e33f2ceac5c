"""The catalogue of bad inputs: each stops run.py (or a script) before any training with exit
status 2 and one last stderr line `error: ...` that names the key or the file to change, no
traceback, and no cache entry left behind.

Every case goes through its script's real entry point: one fresh `python tests/e2e/entry_points.py`
process runs the whole catalogue, each case as `python <script> <args>` would run (the script as
`__main__` with its `sys.argv`, in a child forked from that process), so the seconds of importing
torch and Lightning are paid once; `test_a_real_subprocess_agrees` checks that one case prints
the same through a plain `python run.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """Bad input files: npz variants, a truncated image, a text file posing as an image."""
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)

    def npz(name, **over):
        arrays = {
            "x_train": rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
            "y_train": rng.integers(0, 10, 40),
            "x_test": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
            "y_test": rng.integers(0, 10, 20),
        }
        arrays.update(over)
        np.savez(d / f"{name}.npz", **{k: v for k, v in arrays.items() if v is not None})

    npz("good")
    npz("float", x_train=rng.random((40, 32, 32, 3), dtype=np.float32))
    npz("negative", y_train=np.r_[-1, rng.integers(0, 10, 39)])
    npz("missing", y_test=None)
    npz("short", y_train=rng.integers(0, 10, 39))
    npz("shapes", x_test=rng.integers(0, 256, (20, 28, 28, 3), dtype=np.uint8))
    (d / "truncated.npz").write_bytes((d / "good.npz").read_bytes()[:3000])
    (d / "text.npz").write_text("x_train,y_train\n1,2\n")
    (d / "notimage.png").write_text("not an image\n")
    (d / "a_file").write_text("")
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            (d / "folder" / split / c).mkdir(parents=True)
            Image.new("RGB", (32, 32), (10, 200, 30)).save(d / "folder" / split / c / "0.png")
    png = d / "folder" / "train" / "b" / "0.png"
    png.write_bytes(png.read_bytes()[:60])  # truncated
    return d


def assert_one_line_error(p, names: str) -> None:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Traceback" not in p.stdout + p.stderr, p.stderr[-2000:]
    assert lines and lines[-1].startswith("error: ") and names in lines[-1], lines[-1:]


# (overrides, what the error line names); {bad} is the folder of bad files. The list
# (npz input, values that ended in a traceback, messages that did not say what to change) and
# the README's examples.
RUN_CASES = [
    (["dataset=npz", "dataset.root={bad}/text.npz"], "not an npz file: {bad}/text.npz"),
    (["dataset=npz", "dataset.root={bad}/truncated.npz"], "not an npz file: {bad}/truncated.npz"),
    (["dataset=npz", "dataset.root={bad}/float.npz"], "x_train is float32 in [0, 1]: images must be uint8"),
    (["dataset=npz", "dataset.root={bad}/negative.npz"], "{bad}/negative.npz: y_train holds label -1"),
    (["dataset=npz", "dataset.root={bad}/missing.npz"], "{bad}/missing.npz lacks arrays ['y_test']"),
    (["dataset=npz", "dataset.root={bad}/short.npz"], "x_train has 40 images but y_train has 39 labels"),
    (["dataset=npz", "dataset.root={bad}/shapes.npz"], "but x_test images are [3, 28, 28]"),
    (["dataset=npz", "dataset.root={bad}/good.npz", "dataset.num_classes=5"], "labels must be integers in 0..4"),
    (["dataset=image_folder", "dataset.root={bad}/folder"], "cannot read image {bad}/folder/train/b/0.png"),
    (["dataset=image_folder", "dataset.root=/no/such/folder"], "dataset.root=/no/such/folder does not exist"),
    (["dataset=cifar10", "dataset.root=/no/such/folder", "dataset.download=false"], "dataset.root"),
    (["dataset=image_folder"], "dataset.root is not set"),
    (["dataset=image_folder", "dataset.root=tests"], "no 'train' folder"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc' is not a whole number"),
    (["trainer.max_epochs=[1,2]"], "trainer.max_epochs=[1, 2] is not a whole number"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 must be at least 1"),
    (["trainer.batch_size=1.5"], "trainer.batch_size=1.5"),
    (["trainer.channels_last=maybe"], "trainer.channels_last='maybe' is not true or false"),
    (["trainer.precision=8-bit"], "trainer.precision=8-bit is unknown"),
    (["trainer.optimizer.name=lion"], "trainer.optimizer.name"),
    (["seed=abc"], "seed='abc' is not a whole number"),
    (["trainer.optimizer.lr=-0.1"], "trainer.optimizer.lr=-0.1 must be positive"),
    (["trainer.optimizer.lr=abc"], "trainer.optimizer.lr='abc' is not a number"),
    (["attack.poison_rate=abc"], "attack.poison_rate='abc' is not a number"),
    (["attack.poison_rate=1.5"], "attack.poison_rate=1.5 is out of range: use a fraction in [0, 1]"),
    (["attack.target=12"], "attack.target"),
    (["attack.size=20"], "attack.size"),
    (["attack.pattern=triangle"], "attack.pattern"),
    (["attack.pattern=grid", "attack.size=4"], "attack.pattern=grid"),
    (["attack.location=[3]"], "attack.location=[3]"),
    (
        ["attack=blended", "attack.pattern_path={bad}/notimage.png"],
        "attack.pattern_path={bad}/notimage.png is not an image",
    ),
    (["paths.cache_dir={bad}/a_file/cache"], "paths.cache_dir={bad}/a_file/cache is not writable"),
    (
        ["attack=backdoorbench/blended", "assets.dir={bad}/no_assets"],
        "attack.pattern_path=asset:hello_kitty is not in {bad}/no_assets: run `python -m backdoor_bench.assets fetch hello_kitty`",
    ),
    (["dataset.image_size=-3"], "dataset.image_size=-3 must be at least 1"),
    (["model.width=wide"], "model.width='wide' is not a whole number"),
    (["defense=dbr", "defense.sd.metric=loss"], "defense.sd.metric"),
    (["defense=dst", "defense.sd.clean_ratio=0.99"], "defense.sd.clean_ratio"),
]
# (script, arguments, what the error line names) for the scripts; {bad} as above, {reports}:
# folders of results.json files (`good` holds one readable result, `only` a JSON list)
SCRIPT_CASES = [
    ("scripts/report.py", ["{reports}/good", "--rows", "nosuch"], "--rows nosuch is not a run key: use one of"),
    ("scripts/report.py", ["{reports}/good", "--metrics", "nosuch"], "--metrics nosuch: nosuch not in these runs"),
    (
        "scripts/report.py",
        ["{reports}/good", "--metrics", "acc,nosuch"],
        "--metrics acc,nosuch: nosuch not in these runs; use some of acc, asr",
    ),
    ("scripts/report.py", ["{reports}/only"], "no readable results.json under {reports}/only"),
    (
        "scripts/gallery.py",
        ["--attacks", "badnets,nosuch", "--out", "{bad}/gallery.png"],
        "--attacks: no attack config nosuch: use some of",
    ),
]
RUN_IDS = [c[1][:40] for c in RUN_CASES]
SCRIPT_IDS = [f"{c[0]}:{c[2][:30]}" for c in SCRIPT_CASES]
CASE_IDS = RUN_IDS + SCRIPT_IDS
assert len(set(CASE_IDS)) == len(CASE_IDS), "two cases share an id"


@pytest.fixture(scope="module")
def catalogue(bad, tmp_path_factory) -> dict[str, SimpleNamespace]:
    """Every case of the catalogue, run once through its entry point in one fresh process:
    {case id: returncode, stdout, stderr, and for run.py cases out_dir and cache}."""
    tmp = tmp_path_factory.mktemp("catalogue")
    reports = tmp / "reports"
    write_results(reports / "good" / "0", good_results())
    write_results(reports / "only" / "0", [1, 2])  # a JSON list
    cases, folders = [], {}
    for i, (overrides, _) in enumerate(RUN_CASES):
        out_dir, cache = tmp / str(i) / "run", tmp / str(i) / "cache"
        argv = [f"hydra.run.dir={out_dir}", f"paths.cache_dir={cache}", "logger=none", "trainer=tiny"]
        cases.append({"script": "run.py", "argv": argv + [o.format(bad=bad) for o in overrides]})
        folders[CASE_IDS[i]] = {"out_dir": out_dir, "cache": cache}
    for script, args, _ in SCRIPT_CASES:
        cases.append({"script": script, "argv": [a.format(bad=bad, reports=reports) for a in args]})
    for case, case_id in zip(cases, CASE_IDS, strict=True):
        case.update(id=case_id, cwd=str(ROOT))
    (tmp / "cases.json").write_text(json.dumps(cases))
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "e2e" / "entry_points.py"),
            str(tmp / "cases.json"),
            str(tmp / "out.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    done = json.loads((tmp / "out.json").read_text())
    return {k: SimpleNamespace(**v, **folders.get(k, {}), reports=reports) for k, v in done.items()}


@pytest.mark.parametrize("case", RUN_IDS)
def test_bad_run_input_is_one_line(catalogue, bad, case):
    p, names = catalogue[case], dict(zip(RUN_IDS, RUN_CASES))[case][1]
    assert_one_line_error(p, names.format(bad=bad))
    assert "stage: poison" not in p.stdout  # it failed before any training
    assert not list(p.cache.rglob("meta.json")) and not list(p.cache.rglob("payload.pt"))  # no cache entry
    # the folder says why: error.json, and the error in its run.log
    error = json.loads((p.out_dir / "error.json").read_text())
    assert error["kind"] == "config" and names.format(bad=bad) in error["error"]
    assert "config error: " in (p.out_dir / "run.log").read_text()
    assert not (p.out_dir / "results.json").exists()


@pytest.mark.parametrize("case", SCRIPT_IDS)
def test_bad_script_option_is_one_line(catalogue, bad, case):
    p, names = catalogue[case], dict(zip(SCRIPT_IDS, SCRIPT_CASES))[case][2]
    assert_one_line_error(p, names.format(bad=bad, reports=p.reports))
    assert not (bad / "gallery.png").exists()


def test_a_real_subprocess_agrees(run_cli, bad, catalogue):
    p = run_cli("trainer=tiny", "dataset=npz", f"dataset.root={bad}/float.npz", check=False)
    assert_one_line_error(p, f"{bad}/float.npz: x_train is float32 in [0, 1]")
    assert "multiply by 255 and cast to uint8" in p.stderr
    same = catalogue[next(i for i in RUN_IDS if i.startswith("x_train is float32"))]
    assert same.stderr.strip().splitlines()[-1] == p.stderr.strip().splitlines()[-1]


def test_an_unknown_config_option_is_named(run_cli):
    p = run_cli("attack=no_such_attack", check=False)
    assert p.returncode != 0
    assert "attack" in p.stderr and "no_such_attack" in p.stderr and "Traceback" not in p.stderr


def write_results(folder: Path, obj) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(obj))


def good_results(acc: float = 0.9) -> dict:
    cfg = {"attack": {"name": "badnets", "poison_rate": 0.1}, "defense": {"name": "none"}, "seed": 0}
    return {"metrics": {"acc": acc, "asr": 1.0}, "config": cfg, "data": {"name": "digits"}, "timing": {"total": 1}}


def report(capsys, *argv) -> SimpleNamespace:
    sys.path.insert(0, str(ROOT / "scripts"))
    import report as report_script

    rc = report_script.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return SimpleNamespace(returncode=rc, stdout=cap.out, stderr=cap.err)


def test_report_skips_a_corrupt_results_json_and_names_it(tmp_path, capsys):
    write_results(tmp_path / "0", good_results())
    write_results(tmp_path / "1", [1, 2])  # a JSON list
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "results.json").write_text('{"metrics": ')  # cut short
    p = report(capsys, tmp_path)
    assert p.returncode == 0 and "90.00" in p.stdout
    assert f"warning: skipping {tmp_path / '1' / 'results.json'}: a JSON list" in p.stderr
    assert f"warning: skipping {tmp_path / '2' / 'results.json'}: not readable JSON" in p.stderr
    # nothing readable at all: one error line, after the warnings
    only = tmp_path / "only"
    write_results(only / "0", [1, 2])
    p = report(capsys, only)
    assert_one_line_error(p, f"no readable results.json under {only}")
    assert f"skipping {only / '0' / 'results.json'}" in p.stderr
