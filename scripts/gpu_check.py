#!/usr/bin/env python
"""`make gpu-check`: prove the GPU path on any CUDA machine, each step timed, one markdown table.

  python scripts/gpu_check.py            # CUDA: bench, 100-epoch PreActResNet-18 BadNets on
                                         # cifar10-jpeg75 (trainer=gpu), D-BR on that model, one SimCLR epoch
  python scripts/gpu_check.py --smoke    # the same steps on the CPU at trainer=tiny (digits, small_cnn)

Steps: the device and versions; scripts/bench.py --json; run.py attack=badnets defense=none (ACC,
ASR); run.py defense=dbr over the same cache, so it defends that cached model (split precision,
ACC, ASR); one SimCLR epoch (SimCLRViews + NT-Xent) on synthetic images of the dataset's shape.
Everything goes under --out (default outputs/gpu_check/<time>), the cache included: a fresh cache,
so the times are of work done, not reused. Exit status 0 when every step passed, 1 when one
failed, 2 when the machine cannot run it (no CUDA, no data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NO_CUDA = (
    "error: make gpu-check needs a CUDA GPU (torch.cuda.is_available() is False); "
    "scripts/gpu_check.py --smoke runs its steps on the CPU at trainer=tiny"
)
DATA = ROOT / "data" / "cifar10-jpeg75"

# the run.py arguments of each mode (attack=badnets and the model's seed are the defaults)
FULL = ["dataset=cifar10_jpeg75", "model=preact_resnet18", "trainer=gpu", "logger=none"]
SMOKE = ["dataset=digits", "model=small_cnn", "trainer=tiny", "logger=none"]
BENCH_FULL = ["--width", "64", "--device", "cuda", "--precision", "bf16-mixed", "--channels-last"]
BENCH_SMOKE = ["--device", "cpu", "--width", "4", "--size", "16", "--batch-size", "16"]
BENCH_SMOKE += ["--steps", "2", "--warmup", "1", "--workers", "0"]


class Step:
    def __init__(self, name: str):
        self.name, self.result, self.ok, self.t0, self.seconds = name, "", True, time.perf_counter(), 0.0

    def done(self, result: str, ok: bool = True) -> Step:
        self.result, self.ok, self.seconds = result, ok, time.perf_counter() - self.t0
        print(f"[gpu-check] {self.name}: {result} ({self.seconds:.1f} s)", flush=True)
        return self


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * float(v):.2f}%"


def _tail(text: str, n: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    # this checkout's package first (bench.py's own folder is scripts/, not the root)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)


def step_device(smoke: bool) -> Step:
    import torch

    s = Step("device")
    if smoke:
        name = f"cpu x{torch.get_num_threads()} threads"
        cuda = f"CUDA {torch.version.cuda} (not used)" if torch.version.cuda else "no CUDA build"
    else:
        name = torch.cuda.get_device_name(0)
        cuda = f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    return s.done(f"{name}; torch {torch.__version__}, {cuda}")


def step_bench(smoke: bool, timeout: float) -> Step:
    s = Step("bench")
    cmd = [sys.executable, str(ROOT / "scripts/bench.py"), "--json", *(BENCH_SMOKE if smoke else BENCH_FULL)]
    try:
        p = _run(cmd, timeout)
    except subprocess.TimeoutExpired:
        return s.done(f"timed out after {timeout:.0f} s", ok=False)
    if p.returncode != 0:
        print(_tail(p.stdout + p.stderr), file=sys.stderr)
        return s.done(f"failed (exit {p.returncode})", ok=False)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    keys = ("compute_ips", "runner_ips", "standard_ips", "ssl_ips", "ssl_compute_ips", "mixmatch_ips")
    ips = ", ".join(f"{k[:-4]} {r[k]:.4g}" for k in keys if k in r)
    return s.done(f"{r['model']} batch {r['batch_size']} {r['precision']}: {ips} images/s")


def _run_py(name: str, out: Path, args: list[str], timeout: float) -> tuple[Step, dict | None]:
    s = Step(name)
    run_dir = out / name
    cmd = [sys.executable, str(ROOT / "run.py"), f"hydra.run.dir={run_dir}", f"paths.cache_dir={out / 'cache'}", *args]
    try:
        p = _run(cmd, timeout)
    except subprocess.TimeoutExpired:
        return s.done(f"timed out after {timeout:.0f} s", ok=False), None
    if p.returncode != 0 or not (run_dir / "results.json").exists():
        print(_tail(p.stdout + p.stderr), file=sys.stderr)
        return s.done(f"run.py failed (exit {p.returncode}); see {run_dir}/run.log", ok=False), None
    return s, json.loads((run_dir / "results.json").read_text())


def step_badnets(smoke: bool, out: Path, timeout: float) -> Step:
    args = [*(SMOKE if smoke else FULL), "attack=badnets", "defense=none"]
    s, r = _run_py("badnets", out, args, timeout)
    if r is None:
        return s
    m, t = r["metrics"], r["timing"]
    epochs = r["config"]["trainer"]["max_epochs"]
    train = t.get("train/backdoored")
    trained = f", training {train:.1f} s" if train is not None else ""
    return s.done(
        f"{r['config']['model']['_target_'].rsplit('.', 1)[-1]} {epochs} epochs: ACC {_pct(m['acc'])}, ASR {_pct(m['asr'])}{trained}"
    )


def step_dbr(smoke: bool, out: Path, timeout: float) -> Step:
    args = [*(SMOKE if smoke else FULL), "attack=badnets", "defense=dbr"]
    s, r = _run_py("dbr", out, args, timeout)
    if r is None:
        return s
    m, d = r["metrics"], r["detection"] or {}
    reused = "train/backdoored" not in r["timing"]
    note = "" if reused else " (the backdoored model was NOT reused from the cache)"
    return s.done(
        f"split precision {_pct(d.get('precision'))}, ACC {_pct(m['acc'])}, ASR {_pct(m['asr'])}{note}", ok=reused
    )


def step_simclr(smoke: bool) -> Step:
    """One epoch of SimCLR (the DBD recipe: batch 512, SimCLRViews, NT-Xent) on synthetic images."""
    s = Step("simclr epoch")
    try:
        import logging

        import torch
        from omegaconf import OmegaConf

        from backdoor_bench.data.augment import SimCLRViews
        from backdoor_bench.data.loader import DeviceLoader
        from backdoor_bench.models import ImageClassifier
        from backdoor_bench.models.preact_resnet import PreActResNet18
        from backdoor_bench.models.small_cnn import SmallCNN
        from backdoor_bench.training.fit import fit
        from backdoor_bench.training.simclr import SimCLR

        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        conf = ROOT / "conf"
        tcfg = OmegaConf.load(conf / "trainer/default.yaml")
        top = OmegaConf.load(conf / f"trainer/{'tiny' if smoke else 'gpu'}.yaml")
        tcfg = OmegaConf.merge(tcfg, {k: v for k, v in top.items() if k != "defaults"})
        tcfg.progress_bar = False
        ssl = OmegaConf.to_container(OmegaConf.load(conf / "ssl/simclr.yaml"))
        n, size, bs = (256, 16, 64) if smoke else (50_000, 32, int(ssl["batch_size"]))
        torch.manual_seed(0)
        x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
        y = torch.zeros(n, dtype=torch.long)
        backbone = SmallCNN(10, 3, 8) if smoke else PreActResNet18(num_classes=10, in_channels=3, width=64)
        model = ImageClassifier(backbone, (0.5,) * 3, (0.25,) * 3)
        module = SimCLR(
            model, SimCLRViews(size, 3, **ssl["augment"]), ssl["optimizer"], 1, channels_last=bool(tcfg.channels_last)
        )
        fit(
            module,
            x,
            y,
            tcfg,
            max_epochs=1,
            loader=lambda device: DeviceLoader(x, y, bs, shuffle=True, device=device, drop_last=True),
        )
        return s.done(f"{type(backbone).__name__} on {n} synthetic {size}x{size} images, batch {bs}")
    except Exception as e:  # optional step: its failure is reported, the others stand
        return s.done(f"failed: {e!r}", ok=False)


def table(steps: list[Step]) -> str:
    rows = ["| step | result | seconds |", "|---|---|---:|"]
    rows += [f"| {s.name} | {s.result if s.ok else '**FAILED** ' + s.result} | {s.seconds:.1f} |" for s in steps]
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="the same steps on the CPU at trainer=tiny (digits, small_cnn)")
    p.add_argument("--out", type=Path, default=None, help="output and cache dir (default outputs/gpu_check/<time>)")
    p.add_argument("--no-simclr", action="store_true", help="leave out the SimCLR epoch")
    p.add_argument("--timeout", type=float, default=None, help="seconds per step (default 3600; smoke 600)")
    a = p.parse_args(argv)

    import torch

    if not a.smoke and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        return 2
    if not a.smoke and not (DATA.is_dir() and any(DATA.iterdir())):
        print(f"error: {DATA.relative_to(ROOT)} not found; run `make data` first (it unpacks cifar10-jpeg75)")
        return 2
    timeout = a.timeout or (600.0 if a.smoke else 3600.0)
    out = (a.out or ROOT / "outputs" / "gpu_check" / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"[gpu-check] {'smoke (CPU, trainer=tiny)' if a.smoke else 'GPU'}; outputs in {out}", flush=True)

    steps = [step_device(a.smoke), step_bench(a.smoke, timeout)]
    steps.append(step_badnets(a.smoke, out, timeout))
    if steps[-1].ok:
        steps.append(step_dbr(a.smoke, out, timeout))
    if not a.no_simclr:
        steps.append(step_simclr(a.smoke))
    text = table(steps)
    (out / "gpu_check.md").write_text(text + "\n")
    print()
    print(text)
    return 0 if all(s.ok for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
