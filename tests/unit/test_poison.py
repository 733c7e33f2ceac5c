import pytest
import torch

from backdoor_bench.attacks.badnets import BadNets
from backdoor_bench.attacks.none import NoAttack
from backdoor_bench.data import ImageSet
from backdoor_bench.errors import ConfigError


def data(n=200, c=10):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 200, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    return ImageSet(x, torch.arange(n) % c, [str(i) for i in range(c)])


def test_exact_count_relabel_and_untouched_rest():
    d = data()
    a = BadNets(name="badnets", poison_rate=0.1, target=3, size=2)
    p = a.poison(d, seed=0)
    assert int(p.poisoned.sum()) == 20 and len(p.indices) == 20
    idx = p.indices
    assert (p.train.y[idx] == 3).all()
    assert torch.equal(p.y_true, d.y)
    assert (p.train.x[idx][..., 6:, 6:] == 255).all()
    rest = ~p.poisoned
    assert torch.equal(p.train.x[rest], d.x[rest]) and torch.equal(p.train.y[rest], d.y[rest])
    assert not p.cover.any()


def test_poison_count_overrides_rate_and_rounding():
    assert int(BadNets(name="b", poison_count=7).poison(data(), 0).poisoned.sum()) == 7
    assert BadNets(name="b", poison_rate=0.015).n_poison(200) == 3


def test_deterministic_for_a_seed():
    d = data()
    a = BadNets(name="badnets")
    assert torch.equal(a.poison(d, 1).indices, a.poison(d, 1).indices)
    assert not torch.equal(a.poison(d, 1).indices, a.poison(d, 2).indices)
    assert torch.equal(a.poison(d, 1).train.x, a.poison(d, 1).train.x)


def test_all2all_relabels_to_next_class():
    d = data()
    p = BadNets(name="b", label_mode="all2all", poison_rate=0.5, num_classes=10).poison(d, 0)
    idx = p.indices
    assert torch.equal(p.train.y[idx], (d.y[idx] + 1) % 10)


def test_rate_out_of_range_and_too_many():
    with pytest.raises(ConfigError, match="attack.poison_rate"):
        BadNets(name="b", poison_rate=1.5)
    with pytest.raises(ConfigError, match="poison_count"):
        BadNets(name="b", poison_count=-1)
    with pytest.raises(ConfigError, match="label_mode"):
        BadNets(name="b", label_mode="one2one")
    with pytest.raises(ConfigError, match="eligible"):
        BadNets(name="b", poison_count=201).poison(data(), 0)


def test_no_attack_poisons_nothing():
    d = data()
    p = NoAttack(num_classes=10).poison(d, 0)
    assert not p.poisoned.any() and torch.equal(p.train.x, d.x)
