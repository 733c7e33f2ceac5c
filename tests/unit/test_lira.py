"""LIRA: its loss, its autoencoder trigger's range and shape, and the pinned trigger on uint8."""

import math

import pytest
import torch

from backdoor_bench.attacks.lira import LIRA, LIRAGenerator, lira_loss
from backdoor_bench.attacks.trained import down_levels
from backdoor_bench.errors import ConfigError
from tests.unit.attack_helpers import data, tools


def test_lira_loss_weighs_the_clean_and_the_triggered_cross_entropy():
    clean = torch.zeros(1, 2)  # CE ln 2
    triggered = torch.tensor([[math.log(3.0), 0.0]])  # CE towards class 0: ln(4/3)
    y, t = torch.tensor([1]), torch.tensor([0])
    assert float(lira_loss(clean, triggered, y, t, 0.25)) == pytest.approx(0.25 * math.log(2) + 0.75 * math.log(4 / 3))
    assert float(lira_loss(clean, triggered, y, t, 1.0)) == pytest.approx(math.log(2))


def test_down_levels_fit_the_image():
    assert [down_levels(s, 4) for s in (32, 16, 8, 28, 6, 2)] == [4, 3, 2, 2, 1, 0]
    assert down_levels(32, 3) == 3 and down_levels(16, 2) == 2


@pytest.mark.parametrize("ch,size", [(1, 8), (1, 16), (3, 32)])
def test_generator_shape_and_bound(ch, size):
    torch.manual_seed(0)
    g = LIRAGenerator(ch, size, (0.5,) * ch, (0.2,) * ch, eps=0.05)
    x = torch.rand(4, ch, size, size)
    n = g.noise(x)
    assert n.shape == x.shape and float(n.abs().max()) <= 0.05 * 0.2 + 1e-7
    assert torch.equal(g(x), (x + n).clamp(0, 1))


def test_trigger_pins_pixels_on_uint8():
    d = data(n=2, ch=1, size=8)
    a = LIRA(name="lira", eps=0.4, num_classes=10)
    with pytest.raises(RuntimeError, match="bind"):
        a.apply(d.x)
    a.bind(tools(d))
    g = a.new_generator(d)  # data's std is 0.5: the trigger is at most 0.4 x 0.5 = 0.2, 51 levels
    last = g.net[-2]
    last.weight.data.zero_()
    last.bias.data.fill_(1e3)  # tanh = 1: +51 levels everywhere
    a.use_generator(g)
    x = torch.tensor([100, 250], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 8, 8).contiguous()
    out = a.apply(x)
    assert out.dtype == torch.uint8 and out[0].eq(151).all() and out[1].eq(255).all()


def test_the_stored_set_is_clean_and_the_stages_are_capped():
    d = data(n=20, ch=1, size=8)
    a = LIRA(name="lira", poison_rate=0.0, num_classes=10)
    p = a.poison(d, 0)
    assert not p.poisoned.any() and torch.equal(p.train.x, d.x)
    a.bind(tools(d, cap=2))
    assert a.stage_lengths(a.tools) == {"joint_epochs": 2, "finetune_epochs": 2}
    a = LIRA(name="lira", finetune_epochs=0)
    a.bind(tools(d, cap=2))
    assert a.stage_lengths(a.tools) == {"joint_epochs": 2, "finetune_epochs": 0}
    with pytest.raises(ConfigError, match="alpha"):
        LIRA(name="lira", alpha=1.5)
