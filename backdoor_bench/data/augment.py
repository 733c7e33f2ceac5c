"""Batched augmentation on the training device: whole batches, no per-sample PIL work."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad every image by `padding` and crop back to its size at a random offset per image
    (torchvision's `RandomCrop(size, padding)`, for a whole batch at once)."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    off = torch.randint(0, 2 * padding + 1, (2, n), device=x.device, generator=generator)
    rows = (torch.arange(h, device=x.device)[None] + off[0, :, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None] + off[1, :, None])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability `p`."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class CropFlip:
    """The standard CIFAR training augmentation: random crop with padding, then horizontal flip."""

    def __init__(self, padding: int = 4, flip: bool = True):
        self.padding, self.flip = padding, flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = random_crop(x, self.padding, generator)
        return random_flip(x, 0.5, generator) if self.flip else x
