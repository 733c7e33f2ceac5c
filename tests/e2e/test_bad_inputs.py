"""The catalogue of bad inputs: each stops run.py (or a script) before any training with exit
status 2 and one last stderr line `error: ...` that names the key or the file to change, no
traceback, and no cache entry left behind.

run.py cases run the script itself (`runpy.run_path("run.py", run_name="__main__")`, as `python
run.py` does) in a forked child process per case, so the seconds of importing torch and Lightning
are paid once for the whole catalogue;
`test_a_real_subprocess_agrees` checks one case through `run_cli` (a fresh `python run.py`). The
config-only cases (keys, values) are in test_validation.py; these are the inputs users met.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import traceback
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


def forked_run(*args, tmp: Path) -> SimpleNamespace:
    """`python run.py *args` as `run_cli` builds it (private output dir and cache, logger=none),
    run as `__main__` in a forked child: returncode, stdout, stderr, out_dir, cache."""
    import backdoor_bench.pipeline  # noqa: F401  (torch, Lightning, Hydra: imported once, here)

    out_dir, cache = tmp / "run", tmp / "cache"
    argv = [str(ROOT / "run.py"), f"hydra.run.dir={out_dir}", f"paths.cache_dir={cache}", "logger=none", *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: run.py's entry point, its output to the two files
            code = 1
            try:
                os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
                sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
                os.chdir(ROOT)
                sys.argv = argv
                runpy.run_path(str(ROOT / "run.py"), run_name="__main__")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0), err.seek(0)
        return SimpleNamespace(
            returncode=os.waitstatus_to_exitcode(status),
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            out_dir=out_dir,
            cache=cache,
        )


def assert_one_line_error(p, names: str) -> None:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Traceback" not in p.stdout + p.stderr, p.stderr[-2000:]
    assert lines and lines[-1].startswith("error: ") and names in lines[-1], lines[-1:]


# (overrides, what the error line names); {bad} is the folder of bad files
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
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc' is not a whole number"),
    (["trainer.max_epochs=[1,2]"], "trainer.max_epochs=[1, 2] is not a whole number"),
    (["trainer.batch_size=1.5"], "trainer.batch_size=1.5"),
    (["trainer.channels_last=maybe"], "trainer.channels_last='maybe' is not true or false"),
    (["seed=abc"], "seed='abc' is not a whole number"),
    (["trainer.optimizer.lr=-0.1"], "trainer.optimizer.lr=-0.1 must be positive"),
    (["trainer.optimizer.lr=abc"], "trainer.optimizer.lr='abc' is not a number"),
    (["attack.poison_rate=abc"], "attack.poison_rate='abc' is not a number"),
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
]


@pytest.mark.parametrize("overrides,names", RUN_CASES, ids=[c[1][:40] for c in RUN_CASES])
def test_bad_run_input_is_one_line(bad, tmp_path, overrides, names):
    args = [o.format(bad=bad) for o in overrides]
    p = forked_run("trainer=tiny", *args, tmp=tmp_path)
    assert_one_line_error(p, names.format(bad=bad))
    assert "stage: poison" not in p.stdout  # it failed before any training
    assert not list(p.cache.rglob("meta.json")) and not list(p.cache.rglob("payload.pt"))  # no cache entry
    # the folder says why: error.json, and the error in its run.log
    error = json.loads((p.out_dir / "error.json").read_text())
    assert error["kind"] == "config" and names.format(bad=bad) in error["error"]
    assert "config error: " in (p.out_dir / "run.log").read_text()
    assert not (p.out_dir / "results.json").exists()


def test_a_real_subprocess_agrees(run_cli, bad):
    p = run_cli("trainer=tiny", "dataset=npz", f"dataset.root={bad}/float.npz", check=False)
    assert_one_line_error(p, f"{bad}/float.npz: x_train is float32 in [0, 1]")
    assert "multiply by 255 and cast to uint8" in p.stderr


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


@pytest.mark.parametrize(
    "argv,names",
    [
        (["--rows", "nosuch"], "--rows nosuch is not a run key: use one of dataset, model, attack"),
        (["--metrics", "nosuch"], "--metrics nosuch: nosuch not in these runs; use some of acc, asr"),
        (["--metrics", "acc,nosuch"], "--metrics acc,nosuch: nosuch not in these runs; use some of acc, asr"),
    ],
)
def test_bad_report_option_is_one_line(tmp_path, capsys, argv, names):
    write_results(tmp_path / "0", good_results())
    assert_one_line_error(report(capsys, tmp_path, *argv), names)


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


def test_gallery_unknown_attack_is_one_line(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import gallery

    rc = gallery.main(["--attacks", "badnets,nosuch", "--out", str(tmp_path / "x.png")])
    cap = capsys.readouterr()
    p = SimpleNamespace(returncode=rc, stdout=cap.out, stderr=cap.err)
    assert_one_line_error(p, "--attacks: no attack config nosuch: use some of")
    assert "badnets" in p.stderr.splitlines()[-1] and not (tmp_path / "x.png").exists()
