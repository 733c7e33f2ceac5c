"""`DeviceLoader`: batches straight from uint8 tensors that already sit on the training device."""

from __future__ import annotations

import math

import torch


class DeviceLoader:
    """Iterates `(x, y, index)` batches: `x` float in [0, 1], augmented on the device.

    The uint8 tensors are moved to `device` once at construction; every epoch shuffles with
    its own generator (seeded, so runs repeat) and augments whole batches there. This replaces a
    DataLoader with PIL transforms in worker processes.
    """

    def __init__(
        self,
        x,
        y,
        batch_size: int,
        shuffle: bool = False,
        augment=None,
        device="cpu",
        seed: int = 0,
        drop_last: bool = False,
        extras: dict | None = None,
    ):
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.extras = {k: v.to(self.device) for k, v in (extras or {}).items()}
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def __len__(self) -> int:
        """Batches per epoch; `drop_last` drops the last partial batch, unless it is the only one."""
        n = len(self.y) / self.batch_size
        return max(1, math.floor(n)) if self.drop_last else math.ceil(n)

    def __iter__(self):
        n = len(self.y)
        order = (
            torch.randperm(n, device=self.device, generator=self.generator)
            if self.shuffle
            else torch.arange(n, device=self.device)
        )
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.x[idx]
            if self.augment is not None:
                x = self.augment(x, self.generator)
            batch = {"x": x.float().div_(255), "y": self.y[idx], "index": idx}
            batch.update({k: v[idx] for k, v in self.extras.items()})
            yield batch
