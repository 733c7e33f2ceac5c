#!/usr/bin/env python
"""Training throughput, same model and batch size, in one process:

(a) compute:  forward/backward/step on tensors already on the device (the ceiling)
(b) runner:   this project's real path: DeviceLoader (uint8 on device, batched crop+flip), Lightning step
(c) standard: torchvision PIL transforms in DataLoader workers + a plain loop, as the reference toolboxes train
(d) ssl:      the SimCLR step as `ctx.ssl_backbone()` trains it (two SimCLRViews + the embedding
              pass + NT-Xent, through `fit`); ssl_compute: the same model's forward/backward on two
              already-augmented views; ssl_over_compute = ssl / ssl_compute
(e) mixmatch: DBD's MixMatch step (SemiLoader with K=2 views, label guessing, MixUp, through `fit`);
              images/s counts the labeled and unlabeled images of a step

  python scripts/bench.py                      # CPU: preact_resnet18 width 16, 32x32, batch 128, fp32
  python scripts/bench.py --json               # one line: {"compute_ips", "runner_ips", "ssl_ips", ...}
  python scripts/bench.py --clock process      # CPU time of this process (a shared machine), not wall time

On CUDA the defaults are trainer=gpu's: width 64, bf16-mixed, channels-last, torch.compile, 200
timed steps (override with --width, --precision, --no-compile, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from backdoor_bench.data.augment import CropFlip, SimCLRViews
from backdoor_bench.data.loader import DeviceLoader
from backdoor_bench.data.sources import CIFAR10_MEAN as MEAN
from backdoor_bench.data.sources import CIFAR10_STD as STD
from backdoor_bench.models import ImageClassifier
from backdoor_bench.models.preact_resnet import PreActResNet18
from backdoor_bench.training.fit import compiled, fit
from backdoor_bench.training.losses import nt_xent
from backdoor_bench.training.mixmatch import MixMatch, SemiLoader
from backdoor_bench.training.optim import configure_optimizers
from backdoor_bench.training.simclr import SimCLR
from backdoor_bench.training.supervised import Supervised

ROOT = Path(__file__).resolve().parent.parent
RUNS = ("compute", "runner", "standard", "ssl", "ssl_compute", "mixmatch")
DEFAULTS = (  # (option, CPU default, CUDA default): on CUDA, trainer=gpu's configuration
    ("width", 16, 64),
    ("steps", 30, 200),
    ("warmup", 5, 20),
    ("precision", "32-true", "bf16-mixed"),
    ("channels_last", False, True),
    ("compile", False, True),
)


def make_model(a):
    return ImageClassifier(PreActResNet18(num_classes=10, in_channels=3, width=a.width), MEAN, STD)


def _autocast(a, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision.startswith("bf16"))


def trainer_cfg(a, device):
    """conf/trainer/default.yaml with this benchmark's device, precision, layout and compile."""
    tcfg = OmegaConf.load(ROOT / "conf/trainer/default.yaml")
    tcfg.accelerator = "gpu" if device.type == "cuda" else "cpu"
    tcfg.precision, tcfg.channels_last, tcfg.progress_bar = a.precision, a.channels_last, False
    tcfg.batch_size, tcfg.compile, tcfg.drop_last = a.batch_size, a.compile, True
    return tcfg


def timed_loop(a, device, step) -> float:
    """Seconds (of --clock) for `a.steps` calls of `step()` after `a.warmup` untimed ones."""
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            _sync(device)
            t0 = a.clock()
        step()
    _sync(device)
    return a.clock() - t0


def plain_step(a, device, module, opt, loss_of):
    """One optimizer step of `loss_of()` under the benchmark's autocast (the compute paths)."""

    def step():
        with _autocast(a, device):
            loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_compute(a, device) -> float:
    model = make_model(a)
    module = Supervised(model, {"lr": 0.01}, 1, channels_last=a.channels_last).to(device)
    opt = configure_optimizers(model.parameters(), {"lr": 0.01, "schedule": "constant", "weight_decay": 5e-4}, 1)
    x = torch.rand(a.batch_size, 3, a.size, a.size, device=device)
    y = torch.randint(0, 10, (a.batch_size,), device=device)
    with compiled(module, trainer_cfg(a, device), device):
        seconds = timed_loop(
            a, device, plain_step(a, device, module, opt, lambda: F.cross_entropy(module(x).float(), y))
        )
    return a.steps * a.batch_size / seconds


class _Clock(pl.Callback):
    """Times the training batches after the warm-up ones (device synchronised at both ends only)."""

    def __init__(self, warmup, clock):
        self.warmup, self.clock, self.t0, self.t1, self.n = warmup, clock, None, None, 0

    def on_train_batch_start(self, trainer, module, batch, i):
        if i == self.warmup:
            _sync(module.device)
            self.t0 = self.clock()

    def on_train_batch_end(self, trainer, module, outputs, batch, i):
        if self.t0 is not None:
            self.n += len(batch["y"]) + (batch["u"].shape[0] * batch["u"].shape[1] if "u" in batch else 0)

    def on_train_epoch_end(self, trainer, module):
        _sync(module.device)
        self.t1 = self.clock()

    def ips(self) -> float:
        return self.n / (self.t1 - self.t0)


def bench_runner(a, device, x, y) -> float:
    tcfg = trainer_cfg(a, device)
    model = make_model(a)
    module = Supervised(model, OmegaConf.to_container(tcfg.optimizer), 1, channels_last=a.channels_last)
    clock = _Clock(a.warmup, a.clock)
    n = (a.warmup + a.steps) * a.batch_size
    fit(module, x[:n], y[:n], tcfg, max_epochs=1, augment=CropFlip(4, True), callbacks=[clock])
    return clock.ips()


def simclr_module(a):
    s = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/ssl/simclr.yaml"))
    views = SimCLRViews(a.size, 3, **s["augment"])
    return SimCLR(
        make_model(a), views, s["optimizer"], 1000, s["temperature"], s["symmetric"], channels_last=a.channels_last
    )


def bench_ssl(a, device, x, y) -> float:
    """The SimCLR step as the SSL backbone trains (views + the embedding pass + NT-Xent), via `fit`."""
    tcfg, clock, n = trainer_cfg(a, device), _Clock(a.warmup, a.clock), (a.warmup + a.steps) * a.batch_size
    loader = lambda d: DeviceLoader(x[:n], y[:n], a.batch_size, shuffle=True, device=d, drop_last=True)  # noqa: E731
    fit(simclr_module(a), x[:n], y[:n], tcfg, max_epochs=1, callbacks=[clock], loader=loader)
    return clock.ips()


def bench_ssl_compute(a, device, x) -> float:
    """The same model's forward/backward on two already-augmented views (NT-Xent, the same optimizer)."""
    module = simclr_module(a).to(device)
    opt = module.configure_optimizers()["optimizer"]
    xb = x[: a.batch_size].to(device).float().div_(255)
    both = torch.cat([module.views(xb), module.views(xb)])
    b = a.batch_size

    def loss():
        z = module.embed(both)
        return nt_xent(z[:b], z[b:], module.temperature, module.symmetric)

    with compiled(module, trainer_cfg(a, device), device):
        seconds = timed_loop(a, device, plain_step(a, device, module, opt, loss))
    return a.steps * a.batch_size / seconds


def bench_mixmatch(a, device, x, y) -> float:
    """DBD's MixMatch step (batch --batch-size // 2 labeled + as many unlabeled, K=2), via `fit`."""
    tcfg, clock, bs = trainer_cfg(a, device), _Clock(a.warmup, a.clock), max(1, a.batch_size // 2)
    split = torch.arange(len(y)) % 2 == 0
    module = MixMatch(
        make_model(a), {"name": "adam", "lr": 0.002, "schedule": "constant"}, 1, 10, channels_last=a.channels_last
    )
    loader = lambda d: SemiLoader(x, y, lambda: split, bs, a.warmup + a.steps, 2, CropFlip(4, True), d)  # noqa: E731
    fit(module, x, y, tcfg, max_epochs=1, callbacks=[clock], loader=loader)
    return clock.ips()


class _PILSet(torch.utils.data.Dataset):
    """CIFAR-style dataset: uint8 HWC arrays -> PIL -> torchvision transforms, per sample."""

    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def bench_standard(a, device, x, y) -> float:
    import torchvision.transforms as T

    transform = T.Compose(
        [T.RandomCrop(a.size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)]
    )
    n = (a.warmup + a.steps) * a.batch_size
    ds = _PILSet(x[:n].permute(0, 2, 3, 1).numpy(), y[:n].numpy(), transform)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=a.batch_size,
        shuffle=True,
        num_workers=a.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=False,
    )
    model = make_model(a).to(device)  # normalisation inside the model too: identical compute
    model.mean.zero_(), model.std.fill_(1.0)  # the transform already normalised
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    seen, t0 = 0, None
    for i, (xb, yb) in enumerate(loader):
        if i == a.warmup:
            _sync(device)
            t0 = a.clock()
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        if a.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with _autocast(a, device):
            loss = F.cross_entropy(model(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if t0 is not None:
            seen += len(yb)
    _sync(device)
    return seen / (a.clock() - t0)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=None, help="preact_resnet18 width (CPU 16; CUDA 64 = the paper model)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="timed steps per path (CPU 30; CUDA 200)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (CPU 5; CUDA 20: compiles)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers for (c)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default=None, help="32-true or bf16-mixed (CPU 32-true; CUDA bf16-mixed)")
    p.add_argument("--channels-last", action="store_true", default=None, help="(on by default on CUDA)")
    p.add_argument("--no-compile", dest="compile", action="store_false", default=None, help="(CUDA compiles)")
    p.add_argument(
        "--compile", dest="compile", action="store_true", help="torch.compile the backbone (on CUDA by default)"
    )
    p.add_argument("--clock", choices=("wall", "process"), default="wall", help="wall time, or this process's CPU time")
    p.add_argument("--only", default=",".join(RUNS))
    p.add_argument("--json", action="store_true", help="print one JSON line")
    a = p.parse_args(argv)
    cuda = torch.device(a.device).type == "cuda"  # the trainer=gpu configuration by default
    for key, cpu_value, cuda_value in DEFAULTS:
        if getattr(a, key) is None:
            setattr(a, key, cuda_value if cuda else cpu_value)
    a.clock = time.process_time if a.clock == "process" else time.perf_counter
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("backdoor_bench").setLevel(logging.ERROR)
    device = torch.device(a.device)
    torch.manual_seed(0)
    n = (a.warmup + a.steps) * a.batch_size
    x = torch.randint(0, 256, (n, 3, a.size, a.size), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    out = {
        "model": f"preact_resnet18-w{a.width}",
        "image_size": a.size,
        "batch_size": a.batch_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "precision": a.precision,
        "channels_last": a.channels_last,
        "compile": a.compile,
        "steps": a.steps,
        "clock": "process" if a.clock is time.process_time else "wall",
        "torch": torch.__version__,
    }
    runs = {
        "compute": lambda: bench_compute(a, device),
        "runner": lambda: bench_runner(a, device, x, y),
        "standard": lambda: bench_standard(a, device, x, y),
        "ssl": lambda: bench_ssl(a, device, x, y),
        "ssl_compute": lambda: bench_ssl_compute(a, device, x),
        "mixmatch": lambda: bench_mixmatch(a, device, x, y),
    }
    for name in a.only.split(","):
        if name not in runs:
            p.error(f"--only {name!r} is unknown: use some of {', '.join(runs)}")
        out[f"{name}_ips"] = round(runs[name](), 1)
        if not a.json:
            print(f"{name:>11}: {out[f'{name}_ips']:9.1f} images/s")
    if "compute_ips" in out and "runner_ips" in out:
        out["runner_over_compute"] = round(out["runner_ips"] / out["compute_ips"], 3)
    if "ssl_compute_ips" in out and "ssl_ips" in out:
        out["ssl_over_compute"] = round(out["ssl_ips"] / out["ssl_compute_ips"], 3)
    if "standard_ips" in out and "runner_ips" in out:
        out["runner_over_standard"] = round(out["runner_ips"] / out["standard_ips"], 3)
    if a.json:
        print(json.dumps(out))
    else:
        for k in ("runner_over_compute", "runner_over_standard", "ssl_over_compute"):
            if k in out:
                print(f"{k}: {out[k]}")
        print({k: v for k, v in out.items() if not k.endswith(("_ips", "_over_compute", "_over_standard"))})


if __name__ == "__main__":
    main()
