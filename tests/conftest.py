import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
CONF = ROOT / "conf"


def group_members(group: str) -> list[str]:
    """Every option of a config group, presets in subfolders included (e.g. `dbd/badnets`)."""
    from backdoor_bench.catalog import members

    return members(group, CONF)


def sweep_params(experiment: str) -> dict[str, list[str]]:
    """An experiment's sweep: {key: its comma-separated values} from `hydra.sweeper.params`."""
    from omegaconf import OmegaConf

    params = OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml").hydra.sweeper.params
    return {k: str(v).split(",") for k, v in params.items()}


# a paper's table at test scale: the tiny trainer on digits with the small CNN
TINY_DIGITS = ("trainer=tiny", "dataset=digits", "model=small_cnn")


def sweep_points(experiment: str, **only: str) -> list[dict[str, str]]:
    """Every point of an experiment's sweep as {key: value}; `only` replaces a key's values
    (`defense="none,dbd"`), as the same override on the command line would."""
    import itertools

    params = {**sweep_params(experiment), **{k: v.split(",") for k, v in only.items()}}
    return [dict(zip(params, values, strict=True)) for values in itertools.product(*params.values())]


def run_table(out: Path, cache: Path, experiment: str, *args, **only: str):
    """A slice of a paper's table as one multirun at TINY_DIGITS: `only` picks the slice (`attack=
    "dbd/badnets"`); every point must finish. The result has `.out_dir` and `.results` (one dict
    per point, in sweep order)."""
    import json

    picked = [f"{k}={v}" for k, v in only.items()]
    p = run_py(out, cache, f"experiment={experiment}", *picked, *TINY_DIGITS, *args, multirun=True, timeout=1500)
    n = len(sweep_points(experiment, **only))
    runs = sorted(out.glob("*/results.json"), key=lambda f: int(f.parent.name.split("_")[0]))
    assert len(runs) == n and not list(out.rglob("error.json")), p.stdout[-2000:]
    p.results = [json.loads(f.read_text()) for f in runs]
    return p


def report_table(out_dir: Path, *args) -> str:
    """`scripts/report.py out_dir *args`'s table (it must exit 0)."""
    p = subprocess.run(
        [sys.executable, "scripts/report.py", str(out_dir), *args], cwd=ROOT, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture
def compose():
    """compose(*overrides) -> the resolved run config (Hydra compose API, no run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(*overrides, return_hydra_config=False):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)

    return _compose


def run_py(out: Path, cache: Path, *args, multirun=False, check=True, env=None, timeout=600):
    """`python run.py` in a subprocess writing to `out` (a run or sweep dir) with the cache at
    `cache`; `logger=none` unless the args name a logger; `env` adds to (a None value: removes
    from) the environment, where W&B is silent. The result has `.out_dir`."""
    cmd = [sys.executable, str(ROOT / "run.py")]
    if multirun:
        cmd.append("-m")
    cmd += [f"hydra.{'sweep' if multirun else 'run'}.dir={out}", f"paths.cache_dir={cache}"]
    if not any(a.startswith("logger=") for a in args):
        cmd.append("logger=none")
    cmd += list(args)
    e = {k: v for k, v in {**os.environ, "WANDB_SILENT": "true", **(env or {})}.items() if v is not None}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=e, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"run.py failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    p.out_dir = out
    return p


@pytest.fixture
def run_cli(tmp_path):
    """run_cli(*overrides) runs `python run.py` in a subprocess with a private output dir and cache."""

    def _run(*args, multirun=False, cache=None, check=True, env=None, timeout=600):
        out = tmp_path / ("multirun" if multirun else "run")
        return run_py(out, cache or tmp_path / "cache", *args, multirun=multirun, check=check, env=env, timeout=timeout)

    return _run


def children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished child processes of this process so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime
