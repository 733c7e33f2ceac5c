"""WaNet (Nguyen & Tran, ICLR 2021) as a poisoning-only attack (DBD, Huang et al., ICLR 2022,
Section 5.1; the flows paper, Appendix B; following ASD): a fixed smooth warping field moves
pixels slightly.

The field: a random k x k grid of 2-D offsets in [-1, 1], normalised by its mean magnitude,
upsampled bicubically to H x W, scaled by s / H and added to the identity sampling grid, times
`grid_rescale`, clipped to [-1, 1] (WaNet Section 3.2). Noise mode (WaNet's cross samples):
`cross_ratio` x the poisoned count of other samples are warped with the field plus per-sample
random noise in [-1, 1] / H and keep their label; they are the attack's cover samples. WaNet's
CIFAR-10 defaults: k 4, s 0.5, grid_rescale 1, cross_ratio 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backdoor_bench.attacks.base import Attack
from backdoor_bench.errors import ConfigError


class WaNet(Attack):
    """Args (beyond `Attack`'s): `k` (control grid size), `s` (warping strength), `grid_rescale`,
    `noise` (add cross samples), `cross_ratio` (cross samples per poisoned sample), `field_seed`."""

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

    @staticmethod
    def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        out = F.grid_sample(x.float(), grid.to(x.device).expand(len(x), -1, -1, -1), align_corners=True)
        return out.round().clamp(0, 255).to(torch.uint8)

    def apply(self, x):
        return self.warp(x, self.grid(x.shape[-1]))

    def n_cover(self, n_poison, n_train):
        return int(round(self.cross_ratio * n_poison)) if self.noise else 0

    def stamp_cover(self, x, index, generator):
        size = x.shape[-1]
        jitter = (torch.rand(len(x), size, size, 2, generator=generator) * 2 - 1) / size
        return self.warp(x, (self.grid(size) + jitter).clamp(-1, 1))
