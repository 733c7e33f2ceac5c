"""Trigger math, label rules and determinism of every attack beyond BadNets and Blended."""

import math

import numpy as np
import pytest
import torch

from backdoor_bench.attacks.adap_blend import AdapBlend
from backdoor_bench.attacks.adap_patch import AdapPatch
from backdoor_bench.attacks.blend_signal import BlendSignal
from backdoor_bench.attacks.bpp import BppAttack
from backdoor_bench.attacks.ctrl import CTRL
from backdoor_bench.attacks.dirty_label import DirtyLabel
from backdoor_bench.attacks.ftrojan import FTrojan
from backdoor_bench.attacks.lc import CORNER_TRIGGERS, LabelConsistent
from backdoor_bench.attacks.sig import SIG
from backdoor_bench.attacks.ssba import SSBA, Encoder
from backdoor_bench.attacks.triggers import Patch, dither, frequency_trigger
from backdoor_bench.attacks.trojan import TrojanNN
from backdoor_bench.attacks.wanet import WaNet
from backdoor_bench.errors import ConfigError
from backdoor_bench.metrics import targeted_misclassification_rate
from backdoor_bench.runner import Runner
from tests.unit.attack_helpers import data, tools


def same_poisoning(attack_fn, d, seed=0):
    a, b = attack_fn().poison(d, seed), attack_fn().poison(d, seed)
    return torch.equal(a.train.x, b.train.x) and torch.equal(a.poisoned, b.poisoned) and torch.equal(a.cover, b.cover)


# -- blend_signal ---------------------------------------------------------------------------------
def test_blend_signal_is_dst_square_wave_exact():
    # D-ST's signal_cifar10_mask.npy: a vertical square wave, 4 periods on 32 columns, starting dark
    p = BlendSignal(name="blend_signal").pattern((3, 32, 32))
    assert p[0, 0].tolist() == ([0] * 4 + [255] * 4) * 4
    assert torch.equal(p, p[:1, :1].expand(3, 32, 32))  # every row and channel alike
    assert BlendSignal(name="b").pattern((1, 16, 16))[0, 5].tolist() == [0, 0, 255, 255] * 4  # scaled: 2-px bands
    x = torch.full((1, 1, 2, 8), 100, dtype=torch.uint8)
    a = BlendSignal(name="b", frequency=1, alpha=0.2)
    assert a.apply(x)[0, 0, 0].tolist() == [80] * 4 + [131] * 4  # 0.8 * 100 + 0.2 * {0, 255}
    horizontal = BlendSignal(name="b", frequency=1, orientation="horizontal").pattern((1, 4, 2))
    assert horizontal[0, :, 0].tolist() == [0, 0, 255, 255] and torch.equal(horizontal[0, :, 0], horizontal[0, :, 1])
    with pytest.raises(ConfigError, match="attack.orientation"):
        BlendSignal(name="b", orientation="diagonal")


# -- sig ------------------------------------------------------------------------------------------
def test_sig_signal_exact_train_and_test_delta():
    a = SIG(name="sig", delta=40, test_delta=60, frequency=1, num_classes=10)
    x = torch.full((1, 1, 1, 4), 100, dtype=torch.uint8)
    # 40 sin(2 pi j / 4) = 0, 40, 0, -40
    assert a.stamp(x, torch.tensor([0]), torch.Generator())[0, 0, 0].tolist() == [100, 140, 100, 60]
    assert a.apply(x)[0, 0, 0].tolist() == [100, 160, 100, 40]
    assert a.apply(torch.zeros_like(x))[0, 0, 0].tolist() == [0, 60, 0, 0]  # clipped at 0
    assert SIG(name="sig").test_delta == 40  # BackdoorBench: the training delta at test too


def test_paper_presets_pin_their_triggers(compose):
    sig, dst_sig = (compose(f"attack={a}").attack for a in ("sig", "dst/sig"))
    assert (sig.delta, sig.test_delta, dst_sig.delta, dst_sig.test_delta) == (40, None, 40, 60)
    lc, dst_lc, bb_lc = (compose(f"attack={a}").attack for a in ("lc", "dst/lc", "backdoorbench/lc"))
    assert (lc.pattern, dst_lc.pattern, bb_lc.pattern) == ("all_corners", "dst_corners", "all_corners")
    assert (bb_lc.poison_rate, bb_lc.eps, bb_lc.step_size, bb_lc.steps) == (1.0, 8, 1.5, 100)


def test_sig_is_clean_label_on_a_share_of_the_target_class():
    d = data()
    a = SIG(name="sig", target=3, poison_rate=0.5, num_classes=10)
    p = a.poison(d, 0)
    assert int(p.poisoned.sum()) == 10  # half of the 20 class-3 samples
    assert (d.y[p.poisoned] == 3).all() and torch.equal(p.train.y, d.y)
    assert same_poisoning(lambda: SIG(name="sig", target=3, poison_rate=0.5), d)
    with pytest.raises(ConfigError, match="clean-label"):
        SIG(name="sig", label_mode="all2all")


# -- wanet ----------------------------------------------------------------------------------------
def test_wanet_zero_strength_is_the_identity_and_field_is_seeded():
    x = data(4, size=8).x
    assert torch.equal(WaNet(name="w", s=0.0).apply(x), x)
    a, b, c = WaNet(name="w"), WaNet(name="w"), WaNet(name="w", field_seed=1)
    assert torch.equal(a.grid(8), b.grid(8)) and not torch.equal(a.grid(8), c.grid(8))
    g = a.grid(8)
    assert g.shape == (1, 8, 8, 2) and g.abs().max() <= 1
    axis = torch.linspace(-1, 1, 8)
    identity = torch.stack(torch.meshgrid(axis, axis, indexing="ij")[::-1], -1)[None]
    # the offset is s * flow / H, and flow is normalised to mean |flow| = 1 on the control grid
    assert float((g - identity).abs().max()) <= 0.5 * 4 / 8


def test_wanet_cross_samples_keep_their_labels():
    d = data(100)
    p = WaNet(name="w", poison_rate=0.1, cross_ratio=2, num_classes=10).poison(d, 0)
    assert int(p.poisoned.sum()) == 10 and int(p.cover.sum()) == 20 and not (p.poisoned & p.cover).any()
    assert torch.equal(p.train.y[p.cover], d.y[p.cover]) and (p.train.y[p.poisoned] == 0).all()
    assert not torch.equal(p.train.x[p.cover], d.x[p.cover])
    assert int(WaNet(name="w", noise=False).poison(d, 0).cover.sum()) == 0


# -- adap_blend -----------------------------------------------------------------------------------
def test_adap_blend_masks_half_the_pieces_per_sample():
    a = AdapBlend(name="ab", pieces=4, mask_rate=0.5, alpha=1.0, test_alpha=1.0)
    m = a.piece_masks(6, 4, 4, torch.Generator().manual_seed(0))
    assert m.shape == (6, 1, 4, 4)
    assert (m.sum((1, 2, 3)) == 8).all()  # 2 of 4 pieces of 2x2 pixels kept
    x = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    out = a.stamp(x, torch.arange(6), torch.Generator().manual_seed(0))
    p = a.pattern((1, 4, 4))
    assert torch.equal(out, (p * m.to(torch.uint8)))  # alpha 1: the pattern on kept pieces, 0 elsewhere
    assert torch.equal(a.apply(x)[0], p)  # the full trigger at test


def test_adap_blend_payload_and_cover():
    d = data(200)
    p = AdapBlend(name="ab", poison_rate=0.05, cover_rate=0.1, pieces=4, num_classes=10).poison(d, 0)
    assert int(p.poisoned.sum()) == 10 and int(p.cover.sum()) == 20 and not (p.poisoned & p.cover).any()
    assert torch.equal(p.train.y[p.cover], d.y[p.cover]) and (p.train.y[p.poisoned] == 0).all()
    with pytest.raises(ConfigError, match="attack.pieces"):
        AdapBlend(name="ab", pieces=6)
    with pytest.raises(ConfigError, match="attack.pieces"):
        AdapBlend(name="ab", pieces=9).check(10, (3, 8, 8))


# -- adap_patch -----------------------------------------------------------------------------------
def patches():
    return dict(
        train_patches=[{"size": 1, "location": [0, 0], "alpha": 1.0}, {"size": 1, "location": [0, 1], "alpha": 0.5}],
        test_patches=[{"size": 1, "location": [1, 1]}, {"size": 1, "location": [1, 0], "value": 7}],
    )


def test_adap_patch_blocks_get_one_patch_each_and_test_stamps_all():
    a = AdapPatch(name="ap", **patches())
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    out = a.stamp(x, torch.arange(4), torch.Generator())
    assert out[:2, 0].tolist() == [[[255, 0], [0, 0]]] * 2  # block 0: patch 0, replaced
    assert out[2:, 0].tolist() == [[[0, 128], [0, 0]]] * 2  # block 1: patch 1 at alpha 0.5 (127.5 -> 128)
    assert a.apply(x)[0, 0].tolist() == [[0, 0], [7, 255]]
    d = data(100)
    p = AdapPatch(name="ap", poison_rate=0.04, cover_rate=0.08, num_classes=10, **patches()).poison(d, 0)
    assert int(p.poisoned.sum()) == 4 and int(p.cover.sum()) == 8
    with pytest.raises(ConfigError, match=r"attack.train_patches\[0\].pattern"):
        AdapPatch(name="ap", train_patches=[{"pattern": "star"}], test_patches=[{}])


# -- dirty_label ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,pixels",
    [
        ("pixel", [(3, 3)]),
        ("pattern", [(3, 3), (2, 2), (2, 4), (4, 2), (4, 4)]),
        ("ell", [(3, 3), (4, 3), (3, 4)]),
    ],
)
def test_dirty_label_shapes_exact(shape, pixels):
    a = DirtyLabel(name="dl", source=1, target=2, shape=shape, color=[10, 20, 30], position=[3, 3])
    out = a.apply(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    expected = torch.zeros(3, 8, 8, dtype=torch.uint8)
    for r, c in pixels:
        expected[:, r, c] = torch.tensor([10, 20, 30], dtype=torch.uint8)
    assert torch.equal(out[0], expected)


def test_dirty_label_drawn_trigger_is_seeded_and_in_bounds():
    for seed in range(30):
        a = DirtyLabel(name="dl", source=0, target=2, scenario_seed=seed)
        shape, color, (r, c) = a.trigger(32)
        lo, hi = {"pixel": (0, 30), "pattern": (1, 29), "ell": (0, 29)}[shape]
        assert lo <= r <= hi and lo <= c <= hi and all(0 <= v <= 254 for v in color)
        assert a.trigger(32) == DirtyLabel(name="dl", source=0, target=2, scenario_seed=seed).trigger(32)
    shapes = {DirtyLabel(name="dl", scenario_seed=s).trigger(32)[0] for s in range(30)}
    assert shapes == {"pixel", "pattern", "ell"}


def test_dirty_label_pinned_triggers_per_scenario_seed():
    triggers = {
        100: {"shape": "ell", "position": [2, 5], "color": [1, 2, 3]},
        1000: {"shape": "pixel", "position": [6, 0], "color": [9, 8, 7]},
    }
    a = DirtyLabel(name="dl", source=1, target=2, scenario_seed=100, triggers=triggers)
    assert a.trigger(8) == ("ell", [1, 2, 3], (2, 5))
    out = a.apply(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert (out[0].sum(0) > 0).nonzero().tolist() == [[2, 5], [2, 6], [3, 5]]
    assert DirtyLabel(name="dl", scenario_seed=1000, triggers=triggers).trigger(8) == ("pixel", [9, 8, 7], (6, 0))
    # a seed not listed is drawn, exactly as without the table
    drawn = DirtyLabel(name="dl", scenario_seed=7, triggers=triggers)
    assert drawn.pinned is None and drawn.trigger(8) == DirtyLabel(name="dl", scenario_seed=7).trigger(8)
    # explicit shape / colour / position override the pinned ones
    b = DirtyLabel(name="dl", scenario_seed=100, triggers=triggers, color=[5, 5, 5], position=[1, 1])
    assert b.trigger(8) == ("ell", [5, 5, 5], (1, 1))
    with pytest.raises(ConfigError, match=r"attack.triggers\[100\].position=\[2, 5\] puts the trigger outside"):
        a.check(10, (3, 4, 4))  # ell on 4x4: rows and columns in [0, 1]
    with pytest.raises(ConfigError, match=r"attack.triggers\[3\].shape"):
        DirtyLabel(name="dl", triggers={3: {"shape": "star", "position": [0, 0], "color": [0, 0, 0]}})
    with pytest.raises(ConfigError, match=r"attack.triggers\[3\] must give"):
        DirtyLabel(name="dl", triggers={3: {"shape": "pixel"}})


def test_dirty_label_poisons_a_share_of_the_source_class():
    d = data(200)
    a = DirtyLabel(name="dl", source=1, target=2, poison_rate=0.25, num_classes=10)
    p = a.poison(d, 0)
    assert int(p.poisoned.sum()) == 5 and (d.y[p.poisoned] == 1).all() and (p.train.y[p.poisoned] == 2).all()
    y = torch.tensor([1, 1, 1, 1, 2, 3])
    assert a.asr_mask(y).tolist() == [True] * 4 + [False] * 2
    with pytest.raises(ConfigError, match="attack.source"):
        DirtyLabel(name="dl", source=2, target=2)
    with pytest.raises(ConfigError, match="attack.source"):
        DirtyLabel(name="dl", source=12, target=2).check(10, (3, 32, 32))
    with pytest.raises(ConfigError, match="attack.position"):
        DirtyLabel(name="dl", shape="pattern", position=[0, 3]).check(10, (3, 32, 32))


def test_tmr_exact():
    y = torch.tensor([1, 1, 1, 1, 0])
    clean = torch.tensor([1, 1, 0, 1, 0])
    trig = torch.tensor([2, 2, 2, 1, 2])
    # source images 0..3: triggered -> 2 and clean -> 1 holds for 0 and 1 only
    assert targeted_misclassification_rate(clean, trig, y, source=1, target=2) == 0.5
    assert targeted_misclassification_rate(clean, trig, y, source=5, target=2) is None
    a = DirtyLabel(name="dl", source=1, target=2)
    assert a.extra_metrics(clean, trig, y) == {"tmr": 0.5}


# -- lc -------------------------------------------------------------------------------------------
def _marks(a, h=8, w=8):
    """The LC trigger on a grey image as a string grid: # bright, . dark, - untouched."""
    out = a.apply(torch.full((1, 1, h, w), 100, dtype=torch.uint8))[0, 0]
    return ["".join({255: "#", 0: "."}.get(int(v), "-") for v in row) for row in out]


def test_lc_all_corners_is_backdoorbench_madrylab_exact():
    # BackdoorBench's utils/bd_img_transform/lc.py, trigger "all-corners", on 32x32 (shown on 8x8)
    assert _marks(LabelConsistent(name="lc")) == [
        "#..--..#",
        ".#.--.#.",
        "#.#--#.#",
        "--------",
        "--------",
        "#..--..#",
        ".#.--.#.",
        "#.#--#.#",
    ]


def test_lc_dst_corners_is_the_dst_code_exact():
    # D-ST/D-BR's _fourCornerTrigger: one pixel in from the top and left borders, mirrored per corner
    assert _marks(LabelConsistent(name="lc", pattern="dst_corners"), 9, 9) == [
        "---------",
        "-#.#--#.#",
        "-.#.--.#.",
        "-#..--..#",
        "---------",
        "---------",
        "-#..--..#",
        "-.#.--.#.",
        "-#.#--#.#",
    ]
    bb, dst = (
        LabelConsistent(name="lc", pattern=p).apply(torch.full((1, 3, 32, 32), 100, dtype=torch.uint8))
        for p in CORNER_TRIGGERS
    )
    assert int((bb != dst).any(1).sum()) == 33  # pixels per 32x32 image where the two references differ
    with pytest.raises(ConfigError, match="attack.size=3"):
        LabelConsistent(name="lc", size=2)


def test_lc_corner_trigger_exact_and_pgd_bounded():
    d = data(40, c=4, size=8)
    a = LabelConsistent(
        name="lc", target=1, poison_rate=0.5, eps=8, step_size=2, steps=3, size=2, pattern="checkerboard", num_classes=4
    )
    x = torch.full((1, 1, 4, 4), 100, dtype=torch.uint8)
    out = a.apply(x)[0, 0]
    assert out.tolist() == [[255, 0, 255, 0], [0, 255, 0, 255], [255, 0, 255, 0], [0, 255, 0, 255]]
    a.bind(tools(d))
    adv = a.perturb(d.x[:5], d.y[:5], torch.Generator().manual_seed(0))
    delta = adv.int() - d.x[:5].int()
    assert delta.abs().max() <= 8 and delta.abs().max() > 0
    p = a.poison(d, 0)
    assert int(p.poisoned.sum()) == 5 and (d.y[p.poisoned] == 1).all() and torch.equal(p.train.y, d.y)
    inner = p.train.x[p.poisoned][..., 2:6, 2:6].int() - d.x[p.poisoned][..., 2:6, 2:6].int()
    assert inner.abs().max() <= 8  # away from the corners only the perturbation


# -- trojan ---------------------------------------------------------------------------------------
def test_trojan_optimises_inside_the_mask_only_and_caches():
    d = data(64, c=4, size=8)
    a = TrojanNN(name="trojan", size=3, steps=5, batch_size=16, num_classes=4)
    t = tools(d)
    a.bind(t)
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    out = a.apply(x)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[5:, 5:] = False
    assert (out[:, :, outside] == 0).all() and (out[:, :, 5:, 5:] > 0).any()
    b = TrojanNN(name="trojan", size=3, steps=5, batch_size=16, num_classes=4)
    b.bind(t)
    assert torch.equal(b.apply(x), out) and t.builds == ["trojan_trigger"]  # built once
    with pytest.raises(RuntimeError, match="bind"):
        TrojanNN(name="trojan").apply(x)


@pytest.mark.parametrize("layer", [None, "backbone.body.3"])
def test_trojan_raises_the_selected_units_of_an_internal_layer(layer):
    d = data(64, c=4, size=8)
    a = TrojanNN(name="trojan", size=3, layer=layer, neurons=2, steps=20, lr=0.05, batch_size=32, num_classes=4)
    a.bind(tools(d))
    out = a.optimise(20)
    assert len(out["units"]) == 2 and out["activation_after"] > out["activation_before"]
    if layer:  # a conv block: units are channels (8 of them at width 4)
        assert out["units"].max() < 8


def test_trojan_obeys_the_stage_cap_and_a_fixed_additive_trigger(tmp_path):
    d = data(64, c=4, size=8)
    t = tools(d, cap=2)
    seen = {}
    t.cached = lambda kind, spec, build: seen.setdefault("spec", spec) and build()
    a = TrojanNN(name="trojan", size=3, steps=500, batch_size=16, num_classes=4)
    a.bind(t)
    a.trigger_pixels()
    assert seen["spec"]["steps"] == 2  # trainer=tiny's max_stage_steps
    trg = np.zeros((3, 4, 4))
    trg[:, 3, 3], trg[:, 0, 0] = 200.0, -50.0
    np.savez(tmp_path / "t.npz", x=trg)
    fixed = TrojanNN(name="trojan", trigger_path=str(tmp_path / "t.npz"))
    assert not fixed.needs_tools
    out = fixed.apply(torch.full((1, 1, 4, 4), 100, dtype=torch.uint8))[0, 0]  # added, clipped (CHW -> 1 channel)
    assert out[3, 3] == 255 and out[0, 0] == 50 and out[1, 1] == 100


# -- ssba -----------------------------------------------------------------------------------------
def test_ssba_residual_is_bounded_and_sample_specific():
    d = data(16, size=8)
    torch.manual_seed(0)
    enc = Encoder(3, 8, 4, width=4, eps=6 / 255)
    t = tools(d, cached=lambda kind, spec, build: {"encoder": enc.state_dict(), "bit_acc": 0.5, "psnr": 40.0})
    a = SSBA(name="ssba", bits=4, width=4, eps=6)
    a.bind(t)
    out = a.apply(d.x)
    diff = out.int() - d.x.int()
    assert diff.abs().max() <= 6 and diff.abs().max() > 0
    assert not torch.equal(diff[0], diff[1])  # the residual depends on the image
    assert torch.equal(a.secret(), SSBA(name="ssba", bits=4).secret())
    with pytest.raises(ConfigError, match="divisible by 4"):
        a.check(10, (3, 6, 6))


# -- frequency and quantisation triggers (FTrojan, CTRL, BppAttack) -------------------------------
def test_frequency_trigger_exact_on_a_flat_block():
    x = torch.full((1, 1, 4, 4), 100, dtype=torch.uint8)
    # orthonormal 2-D DCT: the DC coefficient + 8 adds 8 / 4 to every pixel
    assert (frequency_trigger(x, [0], 4, [[0, 0]], 8, False) == 102).all()
    # (3, 3) + 40: 40 d3(i) d3(j), d3 = sqrt(1/2) cos(3 pi (2i + 1) / 8) = .2706, -.6533, .6533, -.2706
    out = frequency_trigger(x, [0], 4, [[3, 3]], 40, False)[0, 0]
    assert out[0].tolist() == [103, 93, 107, 97] and out[1, 1] == 117
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 256, (4, 3, 8, 8), generator=g, dtype=torch.uint8)
    assert torch.equal(frequency_trigger(r, [1, 2], 8, [[0, 0]], 0, True), r)  # YCrCb and DCT round trips


def test_ftrojan_scales_its_window_and_ctrl_is_clean_label():
    a = FTrojan(name="ftrojan")
    assert a.window(16, 16) == (16, [[7, 7], [15, 15]]) and a.window(32, 32) == (32, [[15, 15], [31, 31]])
    x = torch.full((2, 3, 32, 32), 120, dtype=torch.uint8)
    out = a.apply(x)
    assert out.shape == x.shape and 0 < (out.int() - x.int()).abs().max() <= 10  # invisible: a few levels
    assert torch.equal(out[0], out[1])  # the same trigger on the same image
    d = data()
    p = CTRL(name="ctrl", target=3, poison_rate=0.5, num_classes=10).poison(d, 0)
    assert int(p.poisoned.sum()) == 10 and (d.y[p.poisoned] == 3).all() and torch.equal(p.train.y, d.y)
    with pytest.raises(ConfigError, match="attack.positions"):
        FTrojan(name="ftrojan", positions=[[40, 0]])
    with pytest.raises(ConfigError, match="attack.window_size"):
        FTrojan(name="ftrojan", window_size=5).check(10, (3, 32, 32))


def test_bpp_squeezes_with_floyd_steinberg_exact():
    x = torch.full((1, 1, 1, 3), 100, dtype=torch.uint8)
    # 2 levels: 100 -> 0 (error 100, 7/16 right: 143.75 -> 255, error -111.25, 7/16 right: 51.3 -> 0)
    assert dither(x, 2)[0, 0, 0].tolist() == [0, 255, 0]
    # 8 levels without dithering: 100 / (255 / 7) = 2.745 -> 3 x 36.43 = 109.3 -> 109
    assert BppAttack(name="bpp", dithering=False).apply(x)[0, 0, 0].tolist() == [109] * 3
    y = torch.tensor([[[[10, 200], [60, 250]]]], dtype=torch.uint8)
    # 4 levels (0, 85, 170, 255): 10 -> 0 (err 10: +4.4 right, +3.1 down, +0.6 down-right); 204.4 -> 170 (err 34.4,
    # +6.5 down-left, +10.8 down); 69.6 -> 85 (err -15.4, +6.8 right); 267.4 -> 255
    assert BppAttack(name="bpp", squeeze_num=4).apply(y)[0, 0].tolist() == [[0, 170], [85, 255]]
    with pytest.raises(ConfigError, match="attack.squeeze_num"):
        BppAttack(name="bpp", squeeze_num=1)


# -- shared pieces --------------------------------------------------------------------------------
def test_patch_blend_alpha_and_explicit_pixels():
    p = Patch(size=2, location=[0, 0], alpha=0.5)
    x = torch.full((1, 1, 3, 3), 100, dtype=torch.uint8)
    assert p.stamp(x)[0, 0].tolist() == [[178, 178, 100], [178, 178, 100], [100, 100, 100]]  # 177.5 -> 178
    pix = torch.tensor([[[1, 2], [3, 4]]], dtype=torch.uint8)
    assert Patch(size=2, location=[1, 1]).stamp(x, pix)[0, 0].tolist() == [[100, 100, 100], [100, 1, 2], [100, 3, 4]]
    assert math.isclose(float(Patch(size=2).mask(4, 4).sum()), 4)


def test_dirty_label_scenario_seed_picks_the_samples_and_bad_colours_are_rejected():
    d = data(400)
    a = DirtyLabel(name="dl", source=1, target=2, poison_rate=0.25, scenario_seed=100, num_classes=10)
    b = DirtyLabel(name="dl", source=1, target=2, poison_rate=0.25, scenario_seed=1000, num_classes=10)
    assert not torch.equal(a.poison(d, 0).poisoned, b.poison(d, 0).poisoned)
    with pytest.raises(ConfigError, match="attack.color"):
        DirtyLabel(name="dl", color=[1, 2])
    with pytest.raises(ConfigError, match="pattern_path"):
        BlendSignal(name="b", pattern_path=__file__)


# -- stage caps -----------------------------------------------------------------------------------
def test_trained_attacks_obey_the_stage_caps():
    """TrojanNN's trigger steps, SSBA's encoder epochs and the surrogate's epochs (LC, TrojanNN)
    are capped by `trainer.max_stage_steps` / `max_stage_epochs` (trainer=tiny: 2)."""
    from tests.unit.contexts import tiny_config

    d = data(32, c=4, size=8)
    specs = []

    def record(kind, spec, build):
        specs.append(spec)
        if kind == "trojan_trigger":
            return build()
        return {"encoder": Encoder(3, 8, 4, 4, 6 / 255).state_dict(), "bit_acc": 0.5, "psnr": 40.0}

    t = tools(d, cached=record, cap=2)
    trojan = TrojanNN(name="trojan", size=3, steps=500, batch_size=8, num_classes=4)
    trojan.bind(t)
    trojan.apply(d.x[:1])
    ssba = SSBA(name="ssba", bits=4, width=4, eps=6, epochs=20)
    ssba.bind(t)
    ssba.apply(d.x[:1])
    assert [s.get("steps", s.get("epochs")) for s in specs] == [2, 2]
    runner = Runner(tiny_config("attack=lc", "attack.surrogate_epochs=50"))
    assert runner.attack_tools(d, 50).spec["surrogate"]["epochs"] == 2
    assert Runner(tiny_config("trainer.max_stage_epochs=null")).attack_tools(d, 50).spec["surrogate"]["epochs"] == 50
