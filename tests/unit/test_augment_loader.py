import torch
import torch.nn.functional as F

from backdoor_bench.data.augment import CropFlip, random_crop, random_flip
from backdoor_bench.data.loader import DeviceLoader


def test_random_crop_is_a_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r : r + 5, c : c + 5] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert torch.equal(random_crop(x, 0), x)


def test_flip_all_or_nothing():
    x = torch.arange(8, dtype=torch.uint8).view(1, 1, 2, 4)
    assert torch.equal(random_flip(x, 1.0), x.flip(-1))
    assert torch.equal(random_flip(x, 0.0), x)


def test_cropflip_keeps_dtype_and_shape():
    x = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    out = CropFlip(4, True)(x, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == x.shape


def test_loader_covers_every_sample_once_and_repeats_for_a_seed():
    x = torch.randint(0, 255, (10, 1, 4, 4), dtype=torch.uint8)
    y = torch.arange(10)
    seen = torch.cat([b["index"] for b in DeviceLoader(x, y, 3, shuffle=True, seed=5)])
    assert sorted(seen.tolist()) == list(range(10))
    again = torch.cat([b["index"] for b in DeviceLoader(x, y, 3, shuffle=True, seed=5)])
    assert torch.equal(seen, again)
    b = next(iter(DeviceLoader(x, y, 4)))
    assert b["x"].dtype == torch.float32 and torch.allclose(b["x"], x[:4].float() / 255)
    assert torch.equal(b["y"], y[:4])
    assert len(DeviceLoader(x, y, 3)) == 4 and len(DeviceLoader(x, y, 3, drop_last=True)) == 3
