"""Batched augmentation on the training device: whole batches, no per-sample PIL work."""

from __future__ import annotations

import math

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


def resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    device=None,
    generator: torch.Generator | None = None,
    tries: int = 10,
) -> torch.Tensor:
    """`n` crop boxes (top, left, height, width) as torchvision's `RandomResizedCrop.get_params`
    draws them: up to `tries` tries per image of an area fraction uniform in `scale` and an aspect
    ratio log-uniform in `ratio`, sides rounded to whole pixels, the first that fits wins, else the
    central crop clamped to `ratio`. All tries of all images at once on `device` (no host sync).
    Returns a float [n, 4] tensor of whole numbers."""
    area = float(height * width)
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    u = torch.rand(2, n, tries, device=device, generator=generator)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u[1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    # the first try that fits: descending weights make the maximum unique (0 when none fits)
    first = (ok * torch.arange(tries, 0, -1, device=ok.device)).argmax(1, keepdim=True)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    fits = ok.any(1)
    # torchvision's fallback: the whole image, clamped to the ratio range, centred
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    w = torch.where(fits, w, torch.full_like(w, fw))
    h = torch.where(fits, h, torch.full_like(h, fh))
    # offsets uniform over the whole pixels where the box fits (torch.randint(0, H - h + 1))
    off = torch.rand(2, n, device=device, generator=generator)
    top = torch.minimum(torch.floor(off[0] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(off[1] * (width - w + 1)), width - w)
    top = torch.where(fits, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(fits, left, torch.full_like(left, (width - fw) // 2))
    return torch.stack([top, left, h, w], 1)


def resized_crop(
    x: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int] | int | None = None,
    flip: torch.Tensor | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Crop each image of `x` [N, C, H, W] to its box (top, left, height, width, in pixels) and
    resize it to `size` (default: the input's), mirrored left-right where `flip` [N] (bool) is set:
    one affine grid per image and ONE `F.grid_sample` for the batch (align_corners=False; border
    padding, as a resize clamps at the edges). Close to torchvision's `resized_crop` (no
    antialiasing); the difference: at a box's edges this interpolates with the pixels just outside
    it, where cropping first clamps. uint8 comes back rounded to uint8, floats in their dtype."""
    n, _, height, width = x.shape
    if size is None:
        size = (height, width)
    elif isinstance(size, int):
        size = (size, size)
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    top, left, h, w = boxes.unbind(1)
    # output normalised coordinate t in [-1, 1] -> input (2 * left + w * (t + 1)) / W - 1
    sx = w / width
    if flip is not None:
        sx = torch.where(flip.to(x.device), -sx, sx)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    # float32 at least: half-precision grid coordinates would misplace samples by a fraction of a pixel
    src = x if x.dtype in (torch.float32, torch.float64) else x.float()
    grid = F.affine_grid(theta.to(src.dtype), [n, x.shape[1], *size], align_corners=False)
    out = F.grid_sample(src, grid, mode=mode, padding_mode="border", align_corners=False)
    if x.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(x.dtype)


class RandomResizedCropFlip(torch.nn.Module):
    """torchvision's `RandomResizedCrop` followed by `RandomHorizontalFlip`, for a whole batch on
    its device: boxes drawn by `resized_crop_boxes`, the flip folded into each image's affine map,
    one `grid_sample` for the batch. No Python loop over the images and no host sync (kornia's
    RandomResizedCrop crops image by image). Works on uint8 and float batches."""

    def __init__(
        self,
        size: int | tuple[int, int],
        scale=(0.08, 1.0),
        ratio=(3 / 4, 4 / 3),
        flip: float = 0.5,
        mode: str = "bilinear",
    ):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.ratio = tuple(float(v) for v in scale), tuple(float(v) for v in ratio)
        self.flip, self.mode = float(flip), mode

    @torch.no_grad()
    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        boxes = resized_crop_boxes(n, h, w, self.scale, self.ratio, x.device, generator)
        flip = torch.rand(n, device=x.device, generator=generator) < self.flip if self.flip > 0 else None
        return resized_crop(x, boxes, self.size, flip, self.mode)


class SimCLRViews(torch.nn.Module):
    """SimCLR's view distribution as batched kornia ops on the device (DBD, Huang et al., ICLR 2022,
    App. A; the official code's SimCLR configs):
    random resized crop (scale 0.2-1, bicubic), flip, colour jitter (0.4, 0.4, 0.4, 0.1) with
    p 0.8, grayscale with p 0.2, Gaussian blur (sigma 0.1-2) with p 0.5.

    The crop and flip are `RandomResizedCropFlip` (one `grid_sample` for the batch, bicubic as
    before); the rest are kornia's.

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
        self.crop = RandomResizedCropFlip(size, scale=tuple(crop_scale), flip=flip, mode="bicubic")
        ops = [K.ColorJitter(b, c, s, h, p=jitter_p)]
        if grayscale_p > 0:
            ops.append(K.RandomGrayscale(p=grayscale_p))
        if blur_p > 0:
            ops.append(K.RandomGaussianBlur((kernel, kernel), tuple(blur_sigma), p=blur_p))
        self.ops = torch.nn.Sequential(*ops)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.ops(self.crop(x.float()).clamp_(0, 1)).clamp_(0, 1)
