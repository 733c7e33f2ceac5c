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


class SimCLRViews(torch.nn.Module):
    """SimCLR's view distribution as batched kornia ops on the device (DBD, Huang et al., ICLR 2022,
    App. A; the official code's SimCLR configs):
    random resized crop (scale 0.2-1, bicubic), flip, colour jitter (0.4, 0.4, 0.4, 0.1) with
    p 0.8, grayscale with p 0.2, Gaussian blur (sigma 0.1-2) with p 0.5.

    Takes and returns float images in [0, 1]. On one-channel images the colour-only parts
    (saturation, hue, grayscale) are left out.
    """

    def __init__(
        self,
        size: int,
        channels: int = 3,
        crop_scale=(0.2, 1.0),
        flip: float = 0.5,
        jitter=(0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma=(0.1, 2.0),
        blur_kernel: int = 0,
    ):
        super().__init__()
        import kornia.augmentation as K

        b, c, s, h = (float(v) for v in jitter)
        if channels != 3:
            s, h, grayscale_p = 0.0, 0.0, 0.0
        # PIL's GaussianBlur(radius=sigma) reaches about 3 sigma: the kernel covers that by default
        kernel = int(blur_kernel) or 2 * int(3 * float(blur_sigma[1]) + 0.5) + 1
        ops = [
            K.RandomResizedCrop((size, size), scale=tuple(crop_scale), resample="BICUBIC"),
            K.RandomHorizontalFlip(p=flip),
            K.ColorJitter(b, c, s, h, p=jitter_p),
        ]
        if grayscale_p > 0:
            ops.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p > 0:
            ops.append(K.RandomGaussianBlur((kernel, kernel), tuple(blur_sigma), p=blur_p))
        self.ops = torch.nn.Sequential(*ops)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.ops(x.float()).clamp_(0, 1)
