"""PoisonInk (Zhang, Chen, Huang, Liao, Zhang, Feng, Hua, Yu, "Poison Ink: Robust and Invisible
Backdoor Attack", IEEE TIP 2022), **a reconstruction**: the trigger is the image's own edge
structure filled with a fixed colour ("poison ink"); all2one, labels changed, 10%
(BackdoorBench's config/attack/poison_ink/default.yaml).

The paper (Sec. III) extracts the edges (Canny), colours them (R 240, G 120, B 20) and hides that
coloured edge image in the cover image with a trained injection network (a UNet with a PatchGAN
critic, and a guidance extractor that must recover the edges after data transformations);
BackdoorBench loads images that network produced. We train no network: the edge map (Sobel
gradient magnitude of the luma, replicate borders, at least `threshold` x the image's largest
magnitude; no Canny non-maximum suppression or hysteresis) selects the pixels, and the ink is
blended into them at `strength`:

    x' = round((1 - strength E) x + strength E ink),   E in {0, 1} the edge map.

Single-channel images take the ink's luma (0.299 R + 0.587 G + 0.114 B). The trigger is
input-aware (it follows each image's edges) like the paper's, but it is an additive blend at a
fixed strength, not the network's learned, near-invisible residual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backdoor_bench.attacks.base import Attack
from backdoor_bench.errors import ConfigError

LUMA = (0.299, 0.587, 0.114)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """The Sobel gradient magnitude of the luma (or the only channel) of float `[N, C, H, W]`,
    replicate borders: `[N, H, W]`."""
    if x.shape[1] == 3:
        lum = (x * torch.tensor(LUMA, dtype=x.dtype, device=x.device)[:, None, None]).sum(1, keepdim=True)
    else:
        lum = x.mean(1, keepdim=True)
    kx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype, device=x.device)
    p = F.pad(lum, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(p, kx[None, None]), F.conv2d(p, kx.T[None, None])
    return (gx**2 + gy**2).sqrt()[:, 0]


def edge_map(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool `[N, H, W]`: pixels whose gradient magnitude is at least `threshold` x the image's
    largest (an image without gradient has no edges)."""
    mag = sobel_magnitude(x)
    top = mag.flatten(1).max(1).values[:, None, None]
    return (mag >= threshold * top) & (mag > 0)


class PoisonInk(Attack):
    """Args (beyond `Attack`'s): `color` (the ink, RGB levels), `strength` (the blend weight on
    edge pixels), `threshold` (the edge threshold, a fraction of each image's largest gradient)."""

    def __init__(self, color=(240, 120, 20), strength: float = 0.2, threshold: float = 0.25, **kw):
        super().__init__(**kw)
        color = [int(c) for c in color]
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ConfigError(f"attack.color={color} must be three levels [R, G, B] in 0..255")
        if not 0 < float(strength) <= 1 or not 0 < float(threshold) <= 1:
            raise ConfigError(f"attack.strength={strength} and attack.threshold={threshold} must be in (0, 1]")
        self.color, self.strength, self.threshold = color, float(strength), float(threshold)

    def ink(self, channels: int) -> torch.Tensor:
        """The ink colour as float `[C, 1, 1]` levels (one channel: its luma)."""
        c = torch.tensor(self.color, dtype=torch.float64)
        return (c if channels == 3 else (c * torch.tensor(LUMA, dtype=torch.float64)).sum().expand(channels))[
            :, None, None
        ]

    def apply(self, x):
        xf = x.double()
        e = edge_map(xf, self.threshold)[:, None].double() * self.strength
        out = (1 - e) * xf + e * self.ink(x.shape[1]).to(x.device)
        return out.round().clamp(0, 255).to(torch.uint8)
