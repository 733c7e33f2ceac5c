"""IAD (input-aware dynamic backdoor): its losses, generators and triggers on small tensors."""

import math

import pytest
import torch

from backdoor_bench.attacks.iad import (
    IAD,
    IADGenerator,
    batch_poison_count,
    blend,
    diversity_loss,
    mask_density_loss,
    squash,
)
from backdoor_bench.errors import ConfigError
from tests.unit.attack_helpers import data, tools


def test_diversity_loss_is_input_over_pattern_distance():
    x1, x2 = torch.zeros(2, 1, 2, 2), torch.stack([torch.full((1, 2, 2), 2.0), torch.full((1, 2, 2), 1.0)])
    g1 = torch.zeros(2, 1, 2, 2)
    g2 = torch.stack([torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 1.0)])
    # per sample RMS distances: 2 / 0.5 = 4 and 1 / 1 = 1, averaged
    assert float(diversity_loss(x1, x2, g1, g2)) == pytest.approx(2.5, rel=1e-6)
    g2 = torch.stack([torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), torch.ones(1, 2, 2)])  # RMS 0.5 and 1
    assert float(diversity_loss(x1, x2, g1, g2)) == pytest.approx(2.5, rel=1e-6)


def test_mask_density_term_penalises_the_mask_above_the_density():
    m = torch.tensor([0.0, 0.032, 0.532, 1.032]).view(1, 1, 2, 2)
    assert float(mask_density_loss(m, 0.032)) == pytest.approx((0.5 + 1.0) / 4)
    assert float(mask_density_loss(torch.full((2, 1, 3, 3), 0.01), 0.032)) == 0.0


def test_squash_blend_and_the_per_batch_poison_count():
    assert float(squash(torch.tensor(0.0))) == 0.5
    assert 0 <= float(squash(torch.tensor(-50.0))) < 1e-7 and 1 - 1e-7 < float(squash(torch.tensor(50.0))) <= 1
    x, p = torch.tensor([0.2, 0.2, 0.2]), torch.tensor([1.0, 1.0, 0.0])
    assert blend(x, p, torch.tensor([0.0, 0.5, 1.0])).tolist() == pytest.approx([0.2, 0.6, 0.0])
    assert batch_poison_count(0.1, 128) == 12 and batch_poison_count(0.5, 4) == 2
    g = torch.Generator().manual_seed(0)
    counts = [batch_poison_count(0.1, 5, g) for _ in range(400)]  # 0.5 expected: one half the time
    assert set(counts) == {0, 1} and 150 < sum(counts) < 250


@pytest.mark.parametrize("ch,size,levels", [(1, 8, 2), (1, 16, 2), (3, 32, 3)])
def test_generators_keep_the_shape_and_stay_in_range(ch, size, levels):
    torch.manual_seed(0)
    g = IADGenerator(ch, size, (0.5,) * ch, (0.25,) * ch)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in g.pattern_net) == levels
    x = torch.rand(3, ch, size, size)
    p, m = g.patterns(x), g.masks(x)
    assert p.shape == x.shape and m.shape == (3, 1, size, size)
    assert 0 <= float(p.min()) and float(p.max()) <= 1 and 0 <= float(m.min()) and float(m.max()) <= 1
    assert torch.allclose(g(x), x + (p - x) * m)
    assert torch.allclose(g(x, x.flip(0)), x + (g.patterns(x.flip(0)) - x) * g.masks(x.flip(0)))


def _constant(gen: IADGenerator, pattern: float, mask: float) -> IADGenerator:
    """Each net's last BatchNorm outputs a constant (eval mode, weight 0): squashed, ~0 or ~1."""
    for net, v in ((gen.pattern_net, pattern), (gen.mask_net, mask)):
        bn = net[-1][-1]
        bn.weight.data.zero_()
        bn.bias.data.fill_(v)
    return gen.eval()


def _attack(d, **kw):
    a = IAD(name="iad", num_classes=10, **kw)
    a.bind(tools(d))
    return a


def test_trigger_pins_pixels_on_uint8():
    d = data(n=4, ch=1, size=8)
    a = _attack(d)
    with pytest.raises(RuntimeError, match="bind"):
        IAD(name="iad").apply(d.x)
    a.use_generator(_constant(a.new_generator(d), pattern=1e3, mask=1e3))  # the pattern everywhere, white
    assert a.apply(d.x).eq(255).all() and a.apply(d.x).dtype == torch.uint8
    a.use_generator(_constant(a.new_generator(d), pattern=-1e3, mask=1e3))  # black
    assert a.apply(d.x).eq(0).all()
    a.use_generator(_constant(a.new_generator(d), pattern=1e3, mask=-1e3))  # no mask: the image
    assert torch.equal(a.apply(d.x), d.x)


class _Source(torch.nn.Module):
    def forward(self, x, source=None):
        return x if source is None else source


def test_cross_samples_take_the_next_cover_images_trigger_and_keep_their_label():
    d = data(n=40, ch=1, size=8)
    a = _attack(d, poison_rate=0.1)
    a.use_generator(_Source())
    x = d.x[:3]
    assert torch.equal(a.stamp_cover(x, torch.arange(3), torch.Generator()), x[[1, 2, 0]])
    p = a.poison(d, 0)
    assert int(p.poisoned.sum()) == 4 and int(p.cover.sum()) == 4 and not (p.poisoned & p.cover).any()
    assert torch.equal(p.train.y[p.cover], d.y[p.cover]) and p.train.y[p.poisoned].eq(0).all()


def test_stage_lengths_enter_the_poison_spec_and_bad_values_stop():
    d = data(n=8, ch=1, size=8)
    a = IAD(name="iad", clean_train_epochs=25)
    a.bind(tools(d, cap=2))
    assert a.poison_spec({"name": "iad", "lambda_div": 1.0}) == {"lambda_div": 1.0, "stages": {"mask_epochs": 2}}
    with pytest.raises(ConfigError, match="mask_density"):
        IAD(name="iad", mask_density=0.0)
    with pytest.raises(ConfigError, match="whole batch"):
        IAD(name="iad", poison_rate=0.6, cross_ratio=1.0)
    with pytest.raises(ConfigError, match="square"):
        IAD(name="iad").check(10, (1, 16, 12))
    assert math.isclose(IAD(name="iad").mask_density, 0.032)
