import numpy as np
import pytest
import torch
from PIL import Image

from backdoor_bench.attacks.blended import Blended
from backdoor_bench.attacks.triggers import blend
from backdoor_bench.errors import ConfigError


def test_blend_exact_values():
    x = torch.tensor([0, 100, 255, 10], dtype=torch.uint8).view(1, 1, 2, 2)
    p = torch.tensor([255, 200, 0, 11], dtype=torch.uint8).view(1, 2, 2)
    # (1-a)x + a p with a = 0.2: 51, 120, 204, 10.2 -> 10
    assert blend(x, p, 0.2).flatten().tolist() == [51, 120, 204, 10]


def test_procedural_pattern_is_fixed_and_test_alpha_differs():
    a = Blended(name="blended", alpha=0.2, test_alpha=0.5, num_classes=10)
    p1, p2 = a.pattern((3, 4, 4)), Blended(name="blended", num_classes=10).pattern((3, 4, 4))
    assert torch.equal(p1, p2) and p1.dtype == torch.uint8
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    assert torch.equal(a.apply(x)[0], (0.5 * p1.float()).round().to(torch.uint8))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(a.stamp(x, torch.tensor([0]), g)[0], (0.2 * p1.float()).round().to(torch.uint8))


def test_pattern_from_file(tmp_path):
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    img[:, :4] = 200
    Image.fromarray(img).save(tmp_path / "p.png")
    a = Blended(name="blended", alpha=1.0, pattern_path=str(tmp_path / "p.png"), num_classes=10)
    p = a.pattern((3, 8, 8))
    assert p[:, :, :4].eq(200).all() and p[:, :, 4:].eq(0).all()
    assert a.pattern((1, 8, 8)).shape == (1, 8, 8)


def test_bad_alpha_and_missing_file():
    with pytest.raises(ConfigError, match="attack.alpha"):
        Blended(name="blended", alpha=1.5)
    with pytest.raises(ConfigError, match="attack.pattern_path"):
        Blended(name="blended", pattern_path="/no/such/file.png")


def test_poison_spec_ignores_test_only_keys(tmp_path):
    cfg = {"name": "blended", "alpha": 0.2, "test_alpha": 0.5}
    a = Blended(**cfg)
    assert a.poison_spec(cfg) == {"alpha": 0.2}
    img = tmp_path / "p.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(img)
    b = Blended(name="blended", pattern_path=str(img))
    spec = b.poison_spec({"pattern_path": str(img)})
    Image.fromarray(np.full((4, 4, 3), 9, dtype=np.uint8)).save(img)
    assert b.poison_spec({"pattern_path": str(img)}) != spec, "editing the image changes the key"
