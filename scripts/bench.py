#!/usr/bin/env python
"""Training throughput, three ways, same model and batch size, in one process:

(a) compute:  forward/backward/step on tensors already on the device (the ceiling)
(b) runner:   this project's real path: DeviceLoader (uint8 on device, batched crop+flip), Lightning step
(c) standard: torchvision PIL transforms in DataLoader workers + a plain loop, as the reference toolboxes train

  python scripts/bench.py                      # preact_resnet18 width 16, 32x32, batch 128
  python scripts/bench.py --json               # one line: {"compute_ips", "runner_ips", "standard_ips", ...}
  python scripts/bench.py --width 64 --device cuda --precision bf16-mixed --channels-last
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

from backdoor_bench.data.augment import CropFlip
from backdoor_bench.data.sources import CIFAR10_MEAN as MEAN
from backdoor_bench.data.sources import CIFAR10_STD as STD
from backdoor_bench.models import ImageClassifier
from backdoor_bench.models.preact_resnet import PreActResNet18
from backdoor_bench.training.fit import fit
from backdoor_bench.training.supervised import Supervised

ROOT = Path(__file__).resolve().parent.parent


def make_model(a):
    return ImageClassifier(PreActResNet18(num_classes=10, in_channels=3, width=a.width), MEAN, STD)


def _autocast(a, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision.startswith("bf16"))


def bench_compute(a, device) -> float:
    model = make_model(a).to(device)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(a.batch_size, 3, a.size, a.size, device=device)
    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch_size,), device=device)
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            _sync(device)
            t0 = time.perf_counter()
        with _autocast(a, device):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return a.steps * a.batch_size / (time.perf_counter() - t0)


class _Clock(pl.Callback):
    """Times the training batches after the warm-up ones (device synchronised at both ends only)."""

    def __init__(self, warmup):
        self.warmup, self.t0, self.t1, self.n = warmup, None, None, 0

    def on_train_batch_start(self, trainer, module, batch, i):
        if i == self.warmup:
            _sync(module.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, i):
        if self.t0 is not None:
            self.n += len(batch["y"])

    def on_train_epoch_end(self, trainer, module):
        _sync(module.device)
        self.t1 = time.perf_counter()


def bench_runner(a, device, x, y) -> float:
    tcfg = OmegaConf.load(ROOT / "conf/trainer/default.yaml")
    tcfg.accelerator = "gpu" if device.type == "cuda" else "cpu"
    tcfg.precision, tcfg.channels_last, tcfg.progress_bar = a.precision, a.channels_last, False
    tcfg.batch_size = a.batch_size
    model = make_model(a)
    module = Supervised(model, OmegaConf.to_container(tcfg.optimizer), 1, channels_last=a.channels_last)
    clock = _Clock(a.warmup)
    n = (a.warmup + a.steps) * a.batch_size
    fit(module, x[:n], y[:n], tcfg, max_epochs=1, augment=CropFlip(4, True), callbacks=[clock])
    return clock.n / (clock.t1 - clock.t0)


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
            t0 = time.perf_counter()
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
    return seen / (time.perf_counter() - t0)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=16, help="preact_resnet18 width (64 = the paper model)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers for (c)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="32-true", help="32-true or bf16-mixed")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--only", default="compute,runner,standard")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    a = p.parse_args(argv)
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
        "torch": torch.__version__,
    }
    runs = {
        "compute": lambda: bench_compute(a, device),
        "runner": lambda: bench_runner(a, device, x, y),
        "standard": lambda: bench_standard(a, device, x, y),
    }
    for name in a.only.split(","):
        out[f"{name}_ips"] = round(runs[name](), 1)
        if not a.json:
            print(f"{name:>9}: {out[f'{name}_ips']:9.1f} images/s")
    if "compute_ips" in out and "runner_ips" in out:
        out["runner_over_compute"] = round(out["runner_ips"] / out["compute_ips"], 3)
    if "standard_ips" in out and "runner_ips" in out:
        out["runner_over_standard"] = round(out["runner_ips"] / out["standard_ips"], 3)
    if a.json:
        print(json.dumps(out))
    else:
        for k in ("runner_over_compute", "runner_over_standard"):
            if k in out:
                print(f"{k}: {out[k]}")
        print({k: v for k, v in out.items() if not k.endswith(("_ips", "_over_compute", "_over_standard"))})


if __name__ == "__main__":
    main()
