"""WaNet (Nguyen & Tran, "WaNet - Imperceptible Warping-based Backdoor Attack", ICLR 2021): a fixed
smooth warping field moves pixels slightly.

The field: a random k x k grid of 2-D offsets in [-1, 1], normalised by its mean magnitude,
upsampled bicubically to H x W, scaled by s / H and added to the identity sampling grid, times
`grid_rescale`, clipped to [-1, 1] (WaNet Section 3.2). Noise mode (WaNet's cross samples): images
warped with the field plus per-sample random noise in [-1, 1] / H that keep their label. WaNet's
CIFAR-10 defaults: k 4, s 0.5, grid_rescale 1, cross_ratio 2.

Two modes:
- `poison` (default): poisoning-only, as DBD (Huang et al., ICLR 2022, Section 5.1, App. B.2) and
  the flows paper (App. B) run it after ASD: one fixed poisoned set, `cross_ratio` x the poisoned
  count of other samples as cover samples.
- `train`: WaNet's own training (Algorithm 1), as BackdoorBench runs it: the stored set stays
  clean and every training batch of the backdoored model is poisoned anew on the device: its
  first floor(`poison_rate` x batch) samples warped and relabeled, the next floor(that x
  `cross_ratio`) warped with noise (BackdoorBench's `generalize_to_lower_pratio`: a batch where
  `poison_rate` x batch < 1 gets one poisoned sample with that probability, else none).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backdoor_bench.attacks.base import BatchPoisoning
from backdoor_bench.errors import ConfigError


class WaNet(BatchPoisoning):
    """Args (beyond `Attack`'s): `k` (control grid size), `s` (warping strength), `grid_rescale`,
    `noise` (add cross samples), `cross_ratio` (cross samples per poisoned sample), `field_seed`,
    `mode` (`poison`: a poisoned stored set; `train`: every training batch poisoned anew)."""

    def __init__(
        self,
        k: int = 4,
        s: float = 0.5,
        grid_rescale: float = 1.0,
        noise: bool = True,
        cross_ratio: float = 2.0,
        field_seed: int = 0,
        **kw,
    ):
        super().__init__(**kw)
        if int(k) < 2:
            raise ConfigError(f"attack.k={k} must be at least 2 (the control grid is k x k)")
        if float(s) < 0 or float(cross_ratio) < 0 or float(grid_rescale) <= 0:
            raise ConfigError("attack.s and attack.cross_ratio must be >= 0 and attack.grid_rescale > 0")
        self.k, self.s, self.grid_rescale = int(k), float(s), float(grid_rescale)
        self.noise, self.cross_ratio, self.field_seed = bool(noise), float(cross_ratio), int(field_seed)
        self._grids: dict = {}  # the field per (size, device), built once

    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        if shape[1] != shape[2]:
            raise ConfigError(f"attack=wanet needs square images, got {shape[1]}x{shape[2]}")

    def grid(self, size: int) -> torch.Tensor:
        """The warping sampling grid `[1, H, W, 2]` in grid_sample's (x, y) convention."""
        g = torch.Generator().manual_seed(self.field_seed)
        ctrl = torch.rand(1, 2, self.k, self.k, generator=g) * 2 - 1
        ctrl = ctrl / ctrl.abs().mean()
        flow = F.interpolate(ctrl, size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        axis = torch.linspace(-1, 1, size)
        rows, cols = torch.meshgrid(axis, axis, indexing="ij")
        identity = torch.stack((cols, rows), dim=-1)[None]
        return ((identity + self.s * flow / size) * self.grid_rescale).clamp(-1, 1)

    def device_grid(self, size: int, device: torch.device) -> torch.Tensor:
        key = (size, str(device))
        if key not in self._grids:
            self._grids[key] = self.grid(size).to(device)
        return self._grids[key]

    @staticmethod
    def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        out = F.grid_sample(x.float(), grid.to(x.device).expand(len(x), -1, -1, -1), align_corners=True)
        return out.round().clamp(0, 255).to(torch.uint8)

    def apply(self, x):
        return self.warp(x, self.grid(x.shape[-1]))

    # -- mode=poison: the stored set -----------------------------------------------------------
    def n_cover(self, n_poison, n_train):
        return int(round(self.cross_ratio * n_poison)) if self.noise else 0

    def noise_grid(self, n: int, size: int, generator: torch.Generator, device=None) -> torch.Tensor:
        """The field plus per-sample noise in [-1, 1] / H, clipped: the cross samples' grids."""
        jitter = (torch.rand(n, size, size, 2, generator=generator, device=device) * 2 - 1) / size
        return (self.device_grid(size, jitter.device) + jitter).clamp(-1, 1)

    def stamp_cover(self, x, index, generator):
        return self.warp(x, self.noise_grid(len(x), x.shape[-1], generator))

    # -- mode=train: every batch ------------------------------------------------------------------
    def n_extra(self, n_poisoned, batch_size):
        """int(poisoned x cross_ratio) noise samples (none without noise), as BackdoorBench."""
        if not self.noise:
            return 0
        if isinstance(n_poisoned, torch.Tensor):
            return (n_poisoned * self.cross_ratio).long()
        return int(n_poisoned * self.cross_ratio)

    def batch_trigger(self, x):
        return F.grid_sample(x, self.device_grid(x.shape[-1], x.device).expand(len(x), -1, -1, -1), align_corners=True)

    def batch_extra(self, x, triggered, generator):
        return F.grid_sample(x, self.noise_grid(len(x), x.shape[-1], generator, x.device), align_corners=True)
