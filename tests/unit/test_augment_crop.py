"""The batched random resized crop: torchvision's box distribution, torchvision's resampling for a
given box, one call for a whole batch (no Python loop, no host sync), reproducible per generator."""

import math

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch.overrides import TorchFunctionMode
from torchvision.transforms import InterpolationMode

from backdoor_bench.data import augment
from backdoor_bench.data.augment import RandomResizedCropFlip, SimCLRViews, resized_crop, resized_crop_boxes


@pytest.mark.parametrize(("height", "width", "scale"), [(32, 32, (0.08, 1.0)), (24, 40, (0.2, 1.0))])
def test_boxes_are_distributed_as_torchvisions(height, width, scale):
    n = 2000
    boxes = resized_crop_boxes(n, height, width, scale, generator=torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert torch.equal(boxes, boxes.round()) and (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    # whole-pixel rounding moves the fraction a little past the range, as in torchvision
    assert area.min() >= scale[0] * 0.8 and area.max() <= 1

    torch.manual_seed(0)
    ref = torch.tensor(
        [T.RandomResizedCrop.get_params(torch.empty(1, height, width), list(scale), [3 / 4, 4 / 3]) for _ in range(n)],
        dtype=torch.float32,
    )
    ref_area = ref[:, 2] * ref[:, 3] / (height * width)
    # the means of 2000 draws: standard errors about 0.006 (area) and 0.004 (log ratio)
    assert abs(area.mean() - ref_area.mean()) < 0.03
    assert abs((w / h).log().mean() - (ref[:, 3] / ref[:, 2]).log().mean()) < 0.03
    assert abs((w / h).log().std() - (ref[:, 3] / ref[:, 2]).log().std()) < 0.03
    # offsets spread over the whole image, as torchvision's
    assert abs((top + h / 2).mean() - (ref[:, 0] + ref[:, 2] / 2).mean()) < 0.05 * height


def test_no_box_fits_falls_back_to_the_central_crop():
    # a 1x40 image: no try of ratio 3/4..4/3 fits, so the whole width clamped to ratio 4/3 (h = 1)
    boxes = resized_crop_boxes(5, 1, 40, generator=torch.Generator().manual_seed(0))
    assert boxes.tolist() == [[0.0, 19.0, 1.0, 1.0]] * 5


@pytest.mark.parametrize("box", [(3, 5, 20, 14), (1, 1, 30, 25), (10, 2, 8, 30), (0, 0, 32, 32)])
def test_a_fixed_box_resamples_as_torchvisions_resized_crop(box):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = TF.resized_crop(x[0], *box, [32, 32], InterpolationMode.BILINEAR, antialias=False)
    out = resized_crop(x, torch.tensor([box, box], dtype=torch.float32))
    diff = (out[0] - ref).abs()
    # on uniform noise (the worst case) measured: mean 0.0085 at most, all of it at the box's
    # edges, where the crop clamps and grid_sample reads the pixels beside it
    assert diff.mean() < 0.015
    # inside the edge band (sample points within the box's pixel centres) they agree exactly
    _, _, h, w = box
    er, ec = math.ceil(32 / (2 * h)), math.ceil(32 / (2 * w))
    assert diff[:, er : 32 - er, ec : 32 - ec].max() < 1e-5
    flipped = resized_crop(x, torch.tensor([box, box], dtype=torch.float32), flip=torch.tensor([True, False]))
    assert torch.allclose(flipped[0], out[0].flip(-1), atol=1e-6) and torch.equal(flipped[1], out[1])


def test_uint8_in_uint8_out_and_the_full_box_is_the_identity():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    full = torch.tensor([[0, 0, 16, 16]] * 4, dtype=torch.float32)
    assert torch.equal(resized_crop(x, full), x)
    out = RandomResizedCropFlip(16)(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert RandomResizedCropFlip(8)(x.float() / 255).shape == (4, 3, 8, 8)
    half = RandomResizedCropFlip(16, flip=0.0)((x.float() / 255).bfloat16(), torch.Generator().manual_seed(0))
    assert half.dtype == torch.bfloat16 and half.shape == x.shape


class _Calls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_a_batch_of_512_in_one_call_without_a_loop_or_a_host_sync():
    crop = RandomResizedCropFlip(32)
    calls = {}
    for n in (4, 512):
        x = torch.rand(n, 3, 32, 32)
        with _Calls() as mode:
            out = crop(x, torch.Generator().manual_seed(0))
        assert out.shape == x.shape
        calls[n] = mode.names
    # the same torch calls whatever the batch size: nothing runs per image
    assert calls[4] == calls[512]
    assert calls[512].count("grid_sample") == 1
    host = {"item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "cpu", "numpy"}
    assert not host & set(calls[512])


def test_the_same_generator_seed_gives_the_same_views():
    x = torch.rand(64, 3, 32, 32)
    crop = RandomResizedCropFlip(32, scale=(0.2, 1.0), mode="bicubic")
    a = crop(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, crop(x, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, crop(x, torch.Generator().manual_seed(8)))
    torch.manual_seed(3)
    v = SimCLRViews(32)(x)
    torch.manual_seed(3)
    assert torch.equal(v, SimCLRViews(32)(x))


def test_simclr_views_crop_with_the_batched_crop(monkeypatch):
    seen = []
    sample = augment.F.grid_sample

    def grid_sample(x, grid, **kw):
        seen.append((x.shape[0], kw["mode"]))
        return sample(x, grid, **kw)

    monkeypatch.setattr(augment.F, "grid_sample", grid_sample)
    out = SimCLRViews(16, blur_p=0.0)(torch.rand(8, 3, 16, 16))
    assert seen == [(8, "bicubic")] and out.shape == (8, 3, 16, 16)
