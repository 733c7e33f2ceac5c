"""FT: fine-tuning the backdoored model on the trusted clean subset only; the shared recipe check."""

import pytest
import torch

from backdoor_bench.data import ImageSet
from backdoor_bench.defenses.ft import FineTuning
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.recipe import recipe
from tests.unit.contexts import context


def test_ft_changes_a_copy_of_the_backdoored_model_on_the_clean_subset():
    g = torch.Generator().manual_seed(0)
    train = ImageSet(
        torch.randint(0, 255, (40, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(40) % 2, ["0", "1"]
    )
    ctx = context(train, clean=train.subset(torch.arange(6)))
    before = {k: v.clone() for k, v in ctx.backdoored_model().state_dict().items()}
    out = FineTuning(epochs=1, batch_size=3).run(ctx)
    after = out.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # trained
    cached = ctx.backdoored_model().state_dict()
    assert all(torch.equal(before[k], cached[k]) for k in before)  # the cached model untouched
    assert out.extra == {"n_clean": 6, "epochs": 1}
    # 6 samples at batch 3 for 1 epoch: 2 steps, the BatchNorm counter shows it
    assert int(after["backbone.body.0.1.num_batches_tracked"] - before["backbone.body.0.1.num_batches_tracked"]) == 2


def test_ft_without_a_clean_subset_says_so():
    train = ImageSet(torch.zeros(8, 1, 4, 4, dtype=torch.uint8), torch.arange(8) % 2, ["0", "1"])
    with pytest.raises(RuntimeError, match="needs the trusted clean subset"):
        FineTuning(epochs=1).run(context(train))


def test_the_recipe_names_the_bad_key():
    r = recipe(3, 16, {"name": "adam", "lr": 0.01, "schedule": "constant"}, prefix="unlearn_")
    assert (r.epochs, r.batch_size, r.optimizer["name"]) == (3, 16, "adam")
    for args, key in [
        ((0, 1, {"lr": 0.1}), "defense.unlearn_epochs=0"),
        ((1, 0, {"lr": 0.1}), "defense.unlearn_batch_size=0"),
        ((1, 1, {}), "defense.unlearn_optimizer.lr"),
        ((1, 1, {"lr": 0.1, "name": "lbfgs"}), "defense.unlearn_optimizer.name"),
    ]:
        with pytest.raises(ConfigError, match=key):
            recipe(*args, prefix="unlearn_")
    with pytest.raises(ConfigError, match="defense.epochs"):
        FineTuning(epochs=0)
