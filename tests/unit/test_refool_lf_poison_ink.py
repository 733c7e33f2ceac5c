"""ReFool, LF and PoisonInk: exact trigger values on small tensors, labels, caching and bad input."""

import numpy as np
import pytest
import torch

from backdoor_bench.attacks.lf import LowFrequency, low_pass
from backdoor_bench.attacks.poison_ink import PoisonInk, edge_map
from backdoor_bench.attacks.refool import (
    ReFool,
    focal_reflection,
    gaussian_vignette,
    ghost_reflection,
    procedural_reflections,
    to_levels,
)
from backdoor_bench.errors import ConfigError
from tests.unit.attack_helpers import data, tools


def flat(v, c=1, size=4):
    return torch.full((c, size, size), float(v), dtype=torch.float64)


# -- ReFool ---------------------------------------------------------------------------------------
def test_refool_ghost_effect_exact():
    # r: a bright last column; shift 1 column, weights 0.5/0.5: [0 0 0 .5 .5], cropped [0 0 .5],
    # resized 3 -> 4 bilinear (half-pixel): [0 0 .1875 .5]; x 0.6, gamma 1/2.2, x 255 truncated
    r = flat(0)
    r[..., 3] = 1
    out = to_levels(ghost_reflection(flat(0), r, 0.4, [0, 1], 0.5))
    assert out[0].tolist() == [[0, 0, 94, 147]] * 4
    # no reflection: the image weighted 0.4 in linear light, 0.4^(1/2.2) x 255 = 168.1
    assert (to_levels(ghost_reflection(flat(1), flat(0), 0.4, [1, 1], 0.5)) == 168).all()


def test_refool_out_of_focus_effect_exact():
    v = gaussian_vignette(4, 4)
    assert v[1, 1] == 1 and round(float(v[0, 1]), 4) == 0.2356 and round(float(v[0, 0]), 4) == 0.0555
    # t 0, r 0.5 (0.2176 in linear light), blur of a flat image is flat: 0.2176 x v x 0.8, gamma back
    out = to_levels(focal_reflection(flat(0), flat(0.5), 0.4, 1.0, 1.1))
    assert out[0].tolist() == [[30, 59, 59, 30], [59, 115, 115, 59], [59, 115, 115, 59], [30, 59, 59, 30]]
    # saturated (t + r = 2 everywhere): the reflection lowers by (2 - 1) x 1.1 to 0, the image stays at 0.4
    assert (to_levels(focal_reflection(flat(1), flat(1), 0.4, 1.0, 1.1)) == 168).all()


def test_refool_poisons_dirty_label_by_default_and_clean_label_on_request():
    d = data(n=100, size=8)
    p = ReFool(name="refool", target=2, num_classes=10).poison(d, 0)
    assert int(p.poisoned.sum()) == 10 and (p.train.y[p.poisoned] == 2).all()
    assert not torch.equal(p.train.x[p.poisoned], d.x[p.poisoned]) and torch.equal(
        p.train.x[~p.poisoned], d.x[~p.poisoned]
    )
    q = ReFool(name="refool", target=2, clean_label=True, poison_rate=0.5, num_classes=10).poison(d, 0)
    assert int(q.poisoned.sum()) == 5 and (d.y[q.poisoned] == 2).all() and torch.equal(q.train.y, d.y)
    a = ReFool(name="refool")
    assert torch.equal(a.apply(d.x[:4]), ReFool(name="refool").apply(d.x[:4]))  # a fixed test trigger
    refl = procedural_reflections(3, (3, 8, 8), 0)
    assert refl.shape == (3, 3, 8, 8) and torch.equal(refl, procedural_reflections(3, (3, 8, 8), 0))
    assert not torch.equal(refl, procedural_reflections(3, (3, 8, 8), 1))


def test_refool_reflection_folder(tmp_path):
    with pytest.raises(ConfigError, match="attack.reflection_dir=.* is not a folder"):
        ReFool(name="refool", reflection_dir=str(tmp_path / "nope"))
    (tmp_path / "notes.txt").write_text("no image")
    with pytest.raises(ConfigError, match="attack.reflection_dir=.* has no images"):
        ReFool(name="refool", reflection_dir=str(tmp_path))
    from PIL import Image

    Image.fromarray(np.zeros((5, 5, 3), dtype=np.uint8)).save(tmp_path / "black.png")
    a = ReFool(name="refool", reflection_dir=str(tmp_path), ghost_rate=1.0, offset=[1, 1], ghost_alpha=0.5)
    # a black reflection leaves the image at alpha_t 0.4 in linear light: 255 -> 168
    assert (a.apply(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)) == 168).all()
    spec = a.poison_spec({"name": "refool", "reflection_dir": str(tmp_path)})
    assert spec["reflections_sha256"][0][0] == "black.png"
    with pytest.raises(ConfigError, match="attack.offset"):
        ReFool(name="refool", offset=[1])


# -- LF -------------------------------------------------------------------------------------------
def test_low_pass_keeps_the_band_exactly():
    j = torch.arange(16, dtype=torch.float64)
    low, high = torch.cos(2 * torch.pi * j / 16), torch.cos(2 * torch.pi * 6 * j / 16)
    img = (low + high)[None].expand(16, 16)
    # radius 0.25 x Nyquist = 2 cycles across 16 px: 1 cycle stays, 6 cycles go
    assert torch.allclose(low_pass(img, 0.25), low[None].expand(16, 16), atol=1e-12)


def test_lf_pattern_is_low_pass_bounded_cached_and_capped():
    d = data(n=60, size=8)
    t = tools(d, cap=2)
    a = LowFrequency(name="lf", eps=10, steps=50, cutoff=0.25, samples=20)
    a.bind(t)
    v = a.pattern((3, 8, 8))
    assert v.shape == (3, 8, 8) and abs(float(v.abs().max()) - 10) < 1e-4  # rescaled to eps levels
    assert torch.allclose(low_pass(v.double(), 0.25), v.double(), atol=1e-4)  # nothing outside the band
    x = d.x[:3]
    assert torch.equal(a.apply(x), (x.double() + v.double()).round().clamp(0, 255).to(torch.uint8))
    b = LowFrequency(name="lf", eps=10, steps=60, cutoff=0.25, samples=20)  # 60 steps cap to 2, like 50
    b.bind(t)
    b.pattern((3, 8, 8))
    assert t.builds == ["lf_pattern"]


def test_lf_fixed_pattern_file_adds_exactly(tmp_path):
    f = tmp_path / "pattern.npy"
    np.save(f, np.array([[[10.0, -20.0], [3.4, 300.0]]]))  # CHW, 1 x 2 x 2
    a = LowFrequency(name="lf", pattern_path=str(f))
    assert not a.needs_tools
    x = torch.full((1, 1, 2, 2), 100, dtype=torch.uint8)
    assert a.apply(x)[0, 0].tolist() == [[110, 80], [103, 255]]
    assert "pattern_sha256" in a.poison_spec({"name": "lf", "pattern_path": str(f)})
    with pytest.raises(ConfigError, match="attack.cutoff"):
        LowFrequency(name="lf", cutoff=0)


# -- PoisonInk ------------------------------------------------------------------------------------
def test_poison_ink_colours_the_edges_exactly():
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    x[..., 2:] = 200  # a vertical step between columns 1 and 2
    assert edge_map(x.double(), 0.25)[0].tolist() == [[False, True, True, False]] * 4
    out = PoisonInk(name="poison_ink").apply(x)[0]
    # 0.8 x + 0.2 x ink (240, 120, 20) on the two edge columns
    assert out[:, 0].tolist() == [[0, 48, 208, 200], [0, 24, 184, 200], [0, 4, 164, 200]]
    gray = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    gray[..., 2:] = 200
    # one channel: the ink's luma 144.48; 0.2 x 144.48 = 28.9, 160 + 28.9 = 188.9
    assert PoisonInk(name="poison_ink").apply(gray)[0, 0, 0].tolist() == [0, 29, 189, 200]
    flat_img = torch.full((1, 3, 4, 4), 90, dtype=torch.uint8)
    assert torch.equal(PoisonInk(name="poison_ink").apply(flat_img), flat_img)  # no edges, no ink
    with pytest.raises(ConfigError, match="attack.color"):
        PoisonInk(name="poison_ink", color=[1, 2])
