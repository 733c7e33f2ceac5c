"""Training-controlled attacks: the batch hook (`Attack.train_batch`) inside the backdoored model's
training step and nowhere else, WaNet's train mode (BackdoorBench's per-batch counts) and Blind."""

import pytest
import torch
import torch.nn.functional as F

from backdoor_bench.attacks.base import TrainBatch
from backdoor_bench.attacks.blind import Blind
from backdoor_bench.attacks.bpp import BppAttack
from backdoor_bench.attacks.wanet import WaNet
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.supervised import Supervised
from tests.unit.attack_helpers import data
from tests.unit.contexts import tiny_config


# -- WaNet, mode=train ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rate, cross, batch, expected",
    [
        (0.1, 2.0, 128, (12, 24)),  # BackdoorBench's CIFAR-10 default: int(12.8), int(12 x 2)
        (0.1, 2.0, 64, (6, 12)),
        (0.1, 2.0, 30, (3, 6)),  # 0.1 x 30 = 3.0000000000000004
        (0.29, 2.0, 100, (28, 56)),  # 0.29 x 100 = 28.999999999999996: floored, as int() there
        (0.05, 1.5, 128, (6, 9)),
        (0.1, 2.0, 10, (1, 2)),  # exactly 1: the normal case
    ],
)
def test_wanet_per_batch_counts_floor_as_backdoorbench(rate, cross, batch, expected):
    a = WaNet(name="w", mode="train", poison_rate=rate, cross_ratio=cross)
    assert a.per_batch(batch) == expected
    assert a.batch_counts(batch) == {"batch_size": batch, "poisoned": expected[0], "cover": expected[1]}
    assert WaNet(name="w", mode="train", poison_rate=rate, noise=False).per_batch(batch) == (expected[0], 0)


def test_wanet_below_one_per_batch_poisons_one_sample_with_that_probability():
    a = WaNet(name="w", mode="train", poison_rate=0.01, cross_ratio=2.0)  # 0.01 x 50 = 0.5
    g = torch.Generator().manual_seed(0)
    draws = [a.per_batch(50, g) for _ in range(2000)]
    n_bd = torch.stack([d[0] for d in draws])
    assert set(n_bd.tolist()) == {0, 1} and abs(n_bd.float().mean().item() - 0.5) < 0.04
    assert all(int(c) == 2 * int(b) for b, c in draws)
    assert a.batch_counts(50)["poisoned"] == "1 with probability 0.5"


def test_wanet_train_mode_rewrites_each_batch_and_stores_a_clean_set():
    d = data(n=40, size=8)
    a = WaNet(name="w", mode="train", poison_rate=0.2, cross_ratio=2.0, target=3, num_classes=10)
    p = a.poison(d, 0)
    assert a.trains_batches and not p.poisoned.any() and not p.cover.any() and torch.equal(p.train.x, d.x)
    x, y = d.x[:10].float() / 255, d.y[:10]
    b = a.train_batch(x, y, torch.Generator().manual_seed(0))
    warped = F.grid_sample(x, a.grid(8).expand(10, -1, -1, -1), align_corners=True)
    assert torch.equal(b.x[:2], warped[:2]) and b.y[:2].tolist() == [3, 3]  # int(0.2 x 10) = 2 poisoned
    for i in range(2, 6):  # int(2 x 2) = 4 cross samples: warped with noise, label kept
        assert not torch.equal(b.x[i], x[i]) and not torch.equal(b.x[i], warped[i])
    assert torch.equal(b.x[6:], x[6:]) and torch.equal(b.y[2:], y[2:]) and b.combine is None
    assert b.x.dtype == torch.float32 and b.x.min() >= 0 and b.x.max() <= 1


def test_wanet_mode_keys():
    a = WaNet(name="w")
    assert a.mode == "poison" and not a.trains_batches
    assert "mode" not in a.poison_spec({"name": "wanet", "mode": "poison", "k": 4})  # old keys kept
    assert WaNet(name="w", mode="train").poison_spec({"name": "wanet", "mode": "train"}) == {"mode": "train"}
    with pytest.raises(ConfigError, match="attack.mode"):
        WaNet(name="w", mode="batch")
    with pytest.raises(ConfigError, match="attack.poison_count"):
        WaNet(name="w", mode="train", poison_count=5)


# -- BppAttack, mode=train -------------------------------------------------------------------------
def test_bpp_train_mode_squeezes_and_adds_negative_samples():
    a = BppAttack(name="bpp", mode="train", dithering=False, poison_rate=0.2, neg_ratio=0.3, num_classes=10)
    assert a.per_batch(128) == (25, 38) and a.per_batch(10) == (2, 3)  # int(25.6), int(38.4): BackdoorBench's int()
    assert BppAttack(name="bpp", mode="train", poison_rate=0.01).per_batch(10, torch.Generator())[1] in (0, 3)
    assert not a.poison(data(n=20), 0).poisoned.any()
    levels = torch.tensor([100, 20, 200, 60, 250, 0, 130, 180, 90, 30], dtype=torch.float32)
    x, y = (levels / 255).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous(), torch.arange(10)
    b = a.train_batch(x, y, torch.Generator().manual_seed(0))
    # 8 levels: step 255/7; 100 -> 109, 20 -> 36 (rounded to uint8 as the test trigger)
    assert (b.x[:2, :, 0, 0] * 255).round().tolist() == [[109] * 3, [36] * 3] and b.y[:2].tolist() == [0, 0]
    residuals = {
        round(float(BppAttack(name="b", dithering=False).apply(v.to(torch.uint8).view(1, 1, 1, 1)) - v)) for v in levels
    }
    for i in range(2, 5):  # negatives: the image plus another image's residual, clipped; labels kept
        assert round(float(b.x[i, 0, 0, 0] * 255 - levels[i])) in residuals | {255 - int(levels[i])}
    assert torch.equal(b.x[5:], x[5:]) and torch.equal(b.y[2:], y[2:])
    assert "neg_ratio" not in BppAttack(name="bpp").poison_spec({"name": "bpp", "mode": "poison", "neg_ratio": 0.1})


# -- Blind ------------------------------------------------------------------------------------------
def test_blind_pattern_is_backdoors101s_exact():
    x = torch.full((1, 1, 10, 10), 100, dtype=torch.uint8)
    out = Blind(name="blind").apply(x)[0, 0]
    k = 100
    assert out[3:8, 1:4].tolist() == [[255, 0, 255], [k, 255, k], [k, k, 0], [k, 255, k], [255, 0, 255]]
    keep = torch.ones(10, 10, dtype=torch.bool)
    keep[3:8, 1:4] = False
    assert (out[keep] == k).all()
    big = Blind(name="blind").apply(torch.full((2, 3, 32, 32), 7, dtype=torch.uint8))
    assert big[:, :, 3, 23:26].tolist() == [[[255, 0, 255]] * 3] * 2  # row 3, columns 23-25 as BackdoorBench
    assert big[0, 0, 5, 25].item() == 0 and big[0, 0, 4, 23].item() == 7 and big[0, 0, 8, 23].item() == 7
    with pytest.raises(ConfigError, match="attack.top"):
        Blind(name="blind").check(10, (1, 6, 6))


def test_blind_combines_clean_and_backdoor_losses_after_the_gate():
    a = Blind(name="blind", target=2, num_classes=10, history=2, loss_threshold=1.0)
    x, y = torch.full((3, 1, 10, 10), 128 / 255), torch.tensor([0, 1, 2])
    assert a.poison(data(n=20, size=10), 0).poisoned.sum() == 0
    g = torch.Generator()
    losses = torch.tensor([0.4, 0.6, 0.5, 2.0, 2.0, 2.0])  # clean mean 0.5, backdoor mean 2.0
    values = []
    for _ in range(3):
        b = a.train_batch(x, y, g)
        values.append(round(b.combine(losses).item(), 6))
    assert b.y.tolist() == [0, 1, 2, 2, 2, 2] and torch.equal(b.x[:3], x)
    assert torch.allclose(b.x[3:], a.apply((x * 255).round().to(torch.uint8)).float() / 255, atol=1e-7)
    # two batches of clean loss alone (fewer than `history` seen), then 1.0 x 0.5 + 0.9 x 2.0
    assert values == [0.5, 0.5, 2.3]
    high = Blind(name="blind", history=1, loss_threshold=0.1)
    assert [round(high.train_batch(x, y, g).combine(losses).item(), 6) for _ in range(2)] == [0.5, 0.5]
    fresh = a.train_batch(x, y, torch.Generator())  # another training: the history starts over
    assert round(fresh.combine(losses).item(), 6) == 0.5
    now = Blind(name="blind", history=0)
    assert round(now.train_batch(x, y, g).combine(losses).item(), 6) == 2.3


# -- the mechanism ------------------------------------------------------------------------------------
def test_supervised_trains_on_the_rewritten_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    seen = []

    def hook(x, y, generator):
        seen.append(generator.initial_seed())
        return TrainBatch(torch.cat([x, x]), torch.cat([y, (y + 1) % 3]), lambda losses: losses[2:].sum())

    m = Supervised(model, {"name": "sgd", "lr": 0.1}, 1, batch_attack=hook, batch_seed=5)
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    loss = m.training_step({"x": x, "y": y}, 0)
    assert torch.allclose(loss, F.cross_entropy(model(x), (y + 1) % 3, reduction="sum")) and seen == [5]
    assert torch.allclose(
        Supervised(model, {"name": "sgd", "lr": 0.1}, 1).training_step({"x": x, "y": y}, 0),
        F.cross_entropy(model(x), y),
    )


def test_only_the_backdoored_model_trains_under_the_attack(tmp_path):
    from backdoor_bench.defenses.base import DefenseContext, Verdict
    from backdoor_bench.runner import Runner

    calls = []

    def hook(x, y, generator):
        calls.append(len(y))
        return TrainBatch(x, y)

    runner = Runner(tiny_config(root=str(tmp_path)))
    train, _ = runner.load_data()
    runner.control_training(hook, {"name": "probe"})
    ctx = DefenseContext(runner.without("attack"), train)
    ctx.backdoored_model()
    assert calls, "the backdoored model's training did not call the attack"
    n = len(calls)
    ctx.train_model(train, "retrain")
    ctx.retrain(Verdict(kept=torch.ones(len(train), dtype=torch.bool)))  # the standard model, not the attacked one
    assert len(calls) == n
    kinds = sorted(p.parent.parent.name for p in (tmp_path / "cache").rglob("payload.pt"))
    assert kinds == ["attacked_model", "model"]
    ctx.backdoored_model()  # cached: the attack is not called again
    assert len(calls) == n
