"""D-ST/D-BR's pieces (Chen, Wu, Wang, NeurIPS 2022) on small tensors: tau, FCT, the rank split, the SD fine-tune loss, SS-CTL,
MCE, D-BR's step directions, the grid trigger and the encoder's warm-up schedule."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backdoor_bench.attacks.triggers import Patch
from backdoor_bench.defenses.dbr import DBR
from backdoor_bench.defenses.dst import DST
from backdoor_bench.defenses.sensitivity import (
    CLEAN,
    POISONED,
    UNCERTAIN,
    fct,
    rank_split,
    rotate_then_shift,
    rotate_translate,
)
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.losses import (
    centroid_separation,
    contrastive_positives,
    lga,
    mixed_cross_entropy,
    sup_con,
)
from backdoor_bench.training.optim import warmup_cosine
from backdoor_bench.training.unlearning import Phases, SignedCE


class Pixels(nn.Module):
    """features(x) = the image's pixels: FCT by hand."""

    def features(self, x):
        return x.flatten(1)


def test_rotate_translate_identity_and_batch_shape():
    x = torch.arange(32.0).view(2, 1, 4, 4)
    assert torch.equal(rotate_translate(x, torch.Generator().manual_seed(0), degrees=0.0, translate=0.0), x)
    out = rotate_translate(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}  # nearest


def test_half_turn_is_a_flip_of_both_axes(monkeypatch):
    x = torch.arange(16.0).view(1, 1, 4, 4)
    monkeypatch.setattr(torch, "rand", lambda *s, generator=None: torch.ones(*s))  # draw +180 deg, +max shift
    out = rotate_translate(x, torch.Generator(), degrees=180.0, translate=0.0)
    assert torch.equal(out, x.flip(-1).flip(-2))
    # a shift of round(0.25 * 4) = 1 pixel right and down, zeros coming in
    shifted = rotate_translate(x, torch.Generator(), degrees=0.0, translate=0.25)
    expect = torch.zeros_like(x)
    expect[..., 1:, 1:] = x[..., :3, :3]
    assert torch.equal(shifted, expect)


def test_rotate_then_shift_is_torchvisions_rotate_then_affine():
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    out = rotate_then_shift(x, torch.tensor([37.0, -120.0]), torch.tensor([[3.0, -5.0], [-6.0, 2.0]]))
    for i, (deg, (tx, ty)) in enumerate([(37.0, (3, -5)), (-120.0, (-6, 2))]):
        ref = TF.rotate(x[i : i + 1], deg, interpolation=InterpolationMode.NEAREST)
        ref = TF.affine(
            ref, angle=0.0, translate=[tx, ty], scale=1.0, shear=[0.0], interpolation=InterpolationMode.NEAREST
        )
        assert torch.equal(out[i : i + 1], ref)


def test_fct_on_a_hand_made_feature_map(monkeypatch):
    """Delta = ||phi(x) - phi(tau x)||^2 / d with phi = pixels and tau = the half turn."""
    x = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    x[0, 0, 0, 0] = 255  # one bright corner: moves to the opposite corner
    x[1] = 255  # uniform: the half turn changes nothing
    with monkeypatch.context() as m:
        m.setattr(torch, "rand", lambda *s, generator=None: torch.ones(*s))
        delta = fct(Pixels(), x, degrees=180.0, translate=0.0)
    assert delta.tolist() == pytest.approx([2 / 4, 0.0])  # two pixels differ by 1, d = 4
    # several draws: the mean of the single draws the same generator gives
    y = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    g = torch.Generator().manual_seed(5)
    single = [(y.float() / 255 - rotate_translate(y.float() / 255, g)).flatten(1).pow(2).mean(1) for _ in range(3)]
    assert fct(Pixels(), y, seed=5, draws=3).tolist() == pytest.approx((sum(single) / 3).tolist(), abs=1e-6)
    assert not torch.allclose(single[0], single[1])


def test_rank_split_sizes_and_order():
    scores = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 0.0])
    g = rank_split(scores, clean_ratio=0.2, poison_ratio=0.1)
    assert (g == CLEAN).nonzero().flatten().tolist() == [1, 9]  # the two lowest
    assert (g == POISONED).nonzero().flatten().tolist() == [2]  # the highest
    assert int((g == UNCERTAIN).sum()) == 7
    tied = rank_split(torch.zeros(1000), 0.2, 0.0, seed=1)  # all equal: a random fifth, not the first
    assert int((tied == CLEAN).sum()) == 200 and (tied[:200] == CLEAN).sum() < 100
    assert torch.equal(tied, rank_split(torch.zeros(1000), 0.2, 0.0, seed=1))
    big = rank_split(torch.rand(50000), 0.2, 0.05)
    assert (int((big == CLEAN).sum()), int((big == POISONED).sum())) == (10000, 2500)  # the paper's sizes


def test_rank_split_per_class_takes_the_lowest_share_of_every_class():
    scores = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 0.0])
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    g = rank_split(scores, clean_ratio=0.4, poison_ratio=0.1, labels=labels)
    # class 0 (scores 5, 1, 9, 3, 7): its two lowest, indices 1 and 3; class 1 (2, 8, 4, 6, 0): 9 and 5
    assert (g == CLEAN).nonzero().flatten().tolist() == [1, 3, 5, 9]
    assert (g == POISONED).nonzero().flatten().tolist() == [2]  # still the global top
    assert (rank_split(scores, 0.4, 0.1) == CLEAN).nonzero().flatten().tolist() == [1, 3, 5, 9]  # here the same
    skewed = torch.tensor([0.0, 0.1, 0.2, 0.3, 9.0, 9.1, 9.2, 9.3, 5.0, 5.1])
    lab = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])
    assert (rank_split(skewed, 0.4, 0.0) == CLEAN).nonzero().flatten().tolist() == [0, 1, 2, 3]  # class 0 only
    assert (rank_split(skewed, 0.4, 0.0, labels=lab) == CLEAN).nonzero().flatten().tolist() == [0, 1, 4, 9]


def test_centroid_separation_exact():
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 2])
    # centroids (2,0), (0,2), (1,1): cosines 0, 1/sqrt2, 1/sqrt2 off the diagonal, each twice; / 9
    assert centroid_separation(f, y).item() == pytest.approx(4 / math.sqrt(2) / 9, abs=1e-6)


def direct_ss_ctl(z, y, supervised, t=0.1, tb=0.07, clean_pos_only=False):
    """SS-CTL by loops: Eq. 2 of Chen, Wu, Wang (NeurIPS 2022) as their official code computes it
    (ST/losses.py, `SupConLoss_Consistency`)."""
    z = F.normalize(z, dim=1)
    b = len(y)
    total = 0.0
    for i in range(2 * b):
        s = i % b
        if supervised[s]:
            pos = [
                j
                for j in range(2 * b)
                if j != i and y[j % b] == y[s] and (not clean_pos_only or supervised[j % b] or j % b == s)
            ]
        else:
            pos = [(i + b) % (2 * b)]
        denom = sum(math.exp(float(z[i] @ z[a]) / t) for a in range(2 * b) if a != i)
        total += -(t / tb) * sum(float(z[i] @ z[p]) / t - math.log(denom) for p in pos) / len(pos)
    return total / (2 * b)


@pytest.mark.parametrize("clean_pos_only", [False, True])
def test_ss_ctl_matches_a_direct_computation(clean_pos_only):
    torch.manual_seed(0)
    z = torch.randn(8, 5)
    y = torch.tensor([0, 1, 0, 0])
    supervised = torch.tensor([True, False, False, True])
    got = sup_con(z, contrastive_positives(y, supervised, clean_pos_only), 0.1, 0.07).item()
    assert got == pytest.approx(direct_ss_ctl(z, y, supervised, clean_pos_only=clean_pos_only), rel=1e-5)


def test_positive_masks_of_ctl_s_ctl_and_ss_ctl():
    y = torch.tensor([0, 0, 1])
    ctl = contrastive_positives(y, torch.zeros(3, dtype=torch.bool))
    assert torch.equal(ctl, torch.eye(6, dtype=torch.bool).roll(3, 1))  # only the other view
    s_ctl = contrastive_positives(y, torch.ones(3, dtype=torch.bool))
    assert s_ctl[0].tolist() == [False, True, False, True, True, False]
    ss = contrastive_positives(y, torch.tensor([True, False, False]))
    assert ss[0].tolist() == [False, True, False, True, True, False]  # the code's mask: row 1 is uncertain
    assert contrastive_positives(y, torch.tensor([True, False, False]), True)[0].tolist() == [
        False,
        False,
        False,
        True,
        False,
        False,
    ]
    assert ss[1].tolist() == [False, False, False, False, True, False]


def test_mce_exact_and_empty_subset_guard():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    y = torch.tensor([0, 0])
    both = mixed_cross_entropy(logits, y, torch.tensor([False, True]), lambda_p=0.5).item()
    assert both == pytest.approx(math.log(2) - 0.5 * math.log(4 / 3), abs=1e-6)
    none = mixed_cross_entropy(logits, y, torch.tensor([False, False]), lambda_p=0.5)
    assert torch.isfinite(none) and none.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-6)
    only = mixed_cross_entropy(logits, y, torch.tensor([True, True]), lambda_p=0.5)
    assert torch.isfinite(only) and only.item() == pytest.approx(-0.5 * (math.log(2) + math.log(4 / 3)) / 2, abs=1e-6)


def test_lga_exact():
    even = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    # CE ln 2 = 0.693 > gamma 0.5: kept as it is; with gamma 1 it turns negative
    assert lga(even, torch.tensor([0, 1])).item() == pytest.approx(math.log(2), abs=1e-6)
    assert lga(even, torch.tensor([0, 1]), gamma=1.0).item() == pytest.approx(-math.log(2), abs=1e-6)
    # ABL's code signs the batch mean: CEs 0.1 and 2.0 (mean 1.05 > 0.5) stay +1.05; per sample -0.1 + 2.0
    logits = torch.tensor([[-math.log(math.exp(0.1) - 1), 0.0], [0.0, math.log(math.exp(2.0) - 1)]])
    ce = F.cross_entropy(logits, torch.tensor([0, 0]), reduction="none")
    assert ce.tolist() == pytest.approx([0.1, 2.0], abs=1e-5)
    assert lga(logits, torch.tensor([0, 0])).item() == pytest.approx(ce.mean().item(), abs=1e-6)
    per = lga(logits, torch.tensor([0, 0]), reduction="none")
    assert per.tolist() == pytest.approx([float(torch.sign(c - 0.5) * c) for c in ce], abs=1e-6)


def test_unlearn_step_raises_and_relearn_step_lowers_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(8, 1, 2, 2), torch.randint(0, 3, (8,))
    for sign in (-1.0, 1.0):
        m = SignedCE(model, {"name": "sgd", "lr": 0.5, "momentum": 0.0, "schedule": "constant"}, 1)
        opt = m.configure_optimizers()
        m.log = lambda *a, **k: None
        before = F.cross_entropy(model(x), y).item()
        loss = m.training_step({"x": x, "y": y, "sign": sign}, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        after = F.cross_entropy(model(x), y).item()
        assert (after > before) if sign < 0 else (after < before)


def test_phases_run_unlearning_then_relearning():
    from backdoor_bench.data.loader import DeviceLoader

    p = DeviceLoader(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), 2)
    c = DeviceLoader(torch.zeros(5, 1, 2, 2, dtype=torch.uint8), torch.ones(5, dtype=torch.long), 2)
    phases = Phases([(p, -1.0), (c, 1.0)])
    assert len(phases) == 5 and [b["sign"] for b in phases] == [-1.0, -1.0, 1.0, 1.0, 1.0]


def test_grid_trigger_pixels():
    px = Patch(size=3, pattern="grid", value=255).pixels(3)
    assert px[0].tolist() == [[0, 0, 255], [0, 255, 0], [255, 0, 255]] and torch.equal(px[0], px[2])
    out = Patch(size=3, pattern="grid").stamp(torch.full((1, 1, 32, 32), 7, dtype=torch.uint8))
    assert out[0, 0, 31, 29:].tolist() == [255, 0, 255] and out[0, 0, 29, 29:].tolist() == [0, 0, 255]
    with pytest.raises(ConfigError, match="size=3"):
        Patch(size=4, pattern="grid")


def test_warmup_cosine_factors():
    f = warmup_cosine({"lr": 0.5, "warmup_epochs": 10, "warmup_from": 0.01, "eta_min_factor": 0.001}, 200)
    floor = 0.5 * 0.001
    cos10 = floor + (0.5 - floor) * (1 + math.cos(math.pi * 10 / 200)) / 2
    assert f(0) * 0.5 == pytest.approx(0.01)
    assert f(5) * 0.5 == pytest.approx(0.01 + (cos10 - 0.01) / 2)
    assert f(10) * 0.5 == pytest.approx(cos10) and f(200) * 0.5 == pytest.approx(floor)


def test_bad_options_say_what_to_change():
    with pytest.raises(ConfigError, match="extractor"):
        DST(extractor="moco", sd={"metric": "fct", "clean_ratio": 0.2, "poison_ratio": 0.05})
    with pytest.raises(ConfigError, match="metric"):
        DBR(sd={"metric": "loss", "clean_ratio": 0.2, "poison_ratio": 0.05})
    with pytest.raises(ConfigError, match="sum"):
        DBR(sd={"metric": "fct", "clean_ratio": 0.9, "poison_ratio": 0.2})
    with pytest.raises(ConfigError, match="mode"):
        DBR(mode="forget", sd={"metric": "fct", "clean_ratio": 0.2, "poison_ratio": 0.05})
    with pytest.raises(ConfigError, match="clean_split"):
        DBR(sd={"metric": "fct", "clean_ratio": 0.2, "poison_ratio": 0.05, "clean_split": "balanced"})


def test_score_histogram_takes_a_log_axis_for_scores_over_orders_of_magnitude(tmp_path, monkeypatch):
    import matplotlib.axes

    from backdoor_bench.figures import score_histogram

    scales = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xscale", lambda self, s, **k: scales.append(s))
    scores = torch.tensor([1e-3, 1e-2, 1.0, 5.0])
    flags = torch.tensor([False, False, True, True])
    score_histogram(scores, flags, ~flags, tmp_path / "a.png")
    score_histogram(scores + 1.0, flags, ~flags, tmp_path / "b.png")
    assert scales == ["log"] and (tmp_path / "b.png").exists()


def test_split_counts_per_class_make_up():
    from backdoor_bench.defenses.sensitivity import CLEAN, POISONED, UNCERTAIN, split_counts

    groups = torch.tensor([CLEAN, CLEAN, POISONED, UNCERTAIN, POISONED, CLEAN], dtype=torch.int8)
    y = torch.tensor([0, 2, 0, 1, 0, 2])
    assert split_counts(groups) == {"n_clean": 3, "n_uncertain": 1, "n_poisoned": 2}
    assert split_counts(groups, y, 3) == {
        "n_clean": 3,
        "n_uncertain": 1,
        "n_poisoned": 2,
        "clean_per_class": [1, 0, 2],
        "poisoned_per_class": [2, 0, 0],
    }


def test_sensitivity_model_option_the_official_resnet18_with_its_stem_max_pool():
    """sd.model: the official code's CIFAR ResNet-18 keeps a 3x3/2 max-pool after its 3x3 stem, so
    its first stage sees half the resolution (16x16 on CIFAR); null keeps the run's model."""
    from backdoor_bench.models.resnet import ResNet18

    seen = {}
    for pool in (False, True):
        net = ResNet18(stem_pool=pool).net
        hook = net.layer1.register_forward_hook(lambda m, i, o, p=pool: seen.__setitem__(p, tuple(o.shape)))
        net(torch.zeros(1, 3, 32, 32))
        hook.remove()
    assert seen == {False: (1, 64, 32, 32), True: (1, 64, 16, 16)}
    sd = {"metric": "fct", "clean_ratio": 0.2, "poison_ratio": 0.05}
    DBR(sd={**sd, "model": None})
    DBR(sd={**sd, "model": {"_target_": "backdoor_bench.models.resnet.ResNet18", "stem_pool": True}})
    with pytest.raises(ConfigError, match=r"sd\.model"):
        DBR(sd={**sd, "model": "resnet18"})
