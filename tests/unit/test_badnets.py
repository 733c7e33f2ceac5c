import pytest
import torch

from backdoor_bench.attacks.badnets import BadNets
from backdoor_bench.errors import ConfigError


def attack(**kw):
    return BadNets(**{"name": "badnets", "num_classes": 10, **kw})


def test_solid_patch_bottom_right_exact():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    out = attack(size=3).apply(x)
    expected = torch.zeros(5, 5, dtype=torch.uint8)
    expected[2:, 2:] = 255
    assert torch.equal(out[0, 0], expected)
    assert torch.equal(x, torch.zeros_like(x)), "apply must not modify its input"


def test_checkerboard_top_left_with_margin():
    x = torch.full((1, 3, 6, 6), 7, dtype=torch.uint8)
    out = attack(size=2, location="top_left", margin=1, pattern="checkerboard").apply(x)
    assert out[0, :, 1, 1].tolist() == [255] * 3  # (0,0) of the patch: even
    assert out[0, :, 1, 2].tolist() == [0] * 3
    assert out[0, :, 2, 1].tolist() == [0] * 3
    assert out[0, :, 2, 2].tolist() == [255] * 3
    assert int((out != 7).sum()) == 3 * 4


def test_explicit_location_and_random_pattern_is_seeded():
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    a, b = attack(location=[1, 4], pattern="random"), attack(location=[1, 4], pattern="random")
    out = a.apply(x)
    assert torch.equal(out, b.apply(x))
    assert torch.equal(out[0, :, 1:4, 4:7], a.trigger.pixels(3))
    assert not torch.equal(a.trigger.pixels(3), attack(pattern="random", pattern_seed=1).trigger.pixels(3))
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[1:4, 4:7] = False
    assert int(out[:, :, mask].sum()) == 0


def test_patch_larger_than_image_is_rejected():
    with pytest.raises(ConfigError, match="attack.size"):
        attack(size=20).check(10, (1, 16, 16))
    attack(size=16).check(10, (1, 16, 16))


def test_bad_values_name_their_key():
    with pytest.raises(ConfigError, match="attack.pattern"):
        attack(pattern="triangle")
    with pytest.raises(ConfigError, match="attack.location"):
        attack(location="middle")
    with pytest.raises(ConfigError, match="attack.target"):
        attack(target=10).check(10, (3, 32, 32))


def test_all2all_target_labels():
    a = attack(label_mode="all2all")
    y = torch.tensor([0, 1, 9])
    assert a.target_label(y).tolist() == [1, 2, 0]
    assert a.asr_mask(y).all()
    b = attack(target=1)
    assert b.target_label(y).tolist() == [1, 1, 1]
    assert b.asr_mask(y).tolist() == [True, False, True]
