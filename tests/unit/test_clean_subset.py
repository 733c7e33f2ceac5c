"""The trusted clean subset (`needs_clean`): its size, that it holds neither poisoned nor cover
samples (as their clean originals), and one-line errors for a fraction that gives no sample or
more than the attack left alone."""

import pytest
import torch

from backdoor_bench.data import ImageSet
from backdoor_bench.defenses.base import trusted_clean_subset
from backdoor_bench.errors import ConfigError


def _train(n=100):
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageSet(x, torch.arange(n) % 10, [str(c) for c in range(10)])


def test_the_subset_has_its_size_and_only_untouched_originals():
    train = _train()
    untouched = torch.ones(100, dtype=torch.bool)
    untouched[:30] = False  # poisoned or cover samples
    clean = trusted_clean_subset(train, untouched, 0.2, seed=0)
    ids = clean.x[:, 0, 0, 0].long()
    assert len(clean) == 20 and (ids >= 30).all() and len(set(ids.tolist())) == 20
    assert torch.equal(clean.y, ids % 10)  # the original labels of the original images
    assert torch.equal(trusted_clean_subset(train, untouched, 0.2, seed=0).x, clean.x)  # seeded
    assert not torch.equal(trusted_clean_subset(train, untouched, 0.2, seed=1).x, clean.x)


def test_a_fraction_that_gives_nothing_or_too_much_is_a_one_line_error():
    train, untouched = _train(), torch.ones(100, dtype=torch.bool)
    untouched[:60] = False
    with pytest.raises(ConfigError, match="clean_fraction=0.0 gives no clean sample"):
        trusted_clean_subset(train, untouched, 0.0, seed=0)
    with pytest.raises(ConfigError, match=r"asks for 50 clean samples but only 40 .* at most 0.400"):
        trusted_clean_subset(train, untouched, 0.5, seed=0)


def test_the_pipeline_gives_a_needs_clean_defense_an_untouched_subset():
    from backdoor_bench.attacks.badnets import BadNets
    from backdoor_bench.defenses.base import Defense
    from backdoor_bench.pipeline import defense_context
    from backdoor_bench.runner import Runner
    from tests.unit.contexts import tiny_config

    class NeedsClean(Defense):
        needs_clean = True

    train = _train(200)
    attack = BadNets(name="badnets", target=0, poison_rate=0.25, size=1, num_classes=10)
    poisoned = attack.poison(train, 0)
    ctx = defense_context(Runner(tiny_config()), NeedsClean("x", clean_fraction=0.1), poisoned, train, out_dir=None)
    ids = ctx.clean.x[:, 0, 0, 0].long()
    assert len(ctx.clean) == 20 and not poisoned.poisoned[ids].any() and not poisoned.cover[ids].any()
