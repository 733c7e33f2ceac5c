"""ASD: the seed pool, the per-class growth of the class-aware split, the stage schedule, the
meta-split's virtual update, and the pool sizes of every stage in a run on a tiny context."""

import pytest
import torch
from torch import nn

from backdoor_bench.data import ImageSet
from backdoor_bench.defenses.asd import (
    ASD,
    balanced_seeds,
    class_aware_count,
    class_aware_pool,
    locate,
    stage_of,
    virtual_update,
)
from backdoor_bench.errors import ConfigError
from tests.unit.contexts import context


def test_class_aware_pool_grows_by_step_every_step_epochs():
    # the paper's schedule: 10 more per class every 5 epochs, none in epochs 0-4, 110 at epochs 55-59
    counts = [class_aware_count(e, 10, 5) for e in range(60)]
    assert counts[:5] == [0] * 5 and counts[5:10] == [10] * 5 and counts[55:] == [110] * 5


def test_class_aware_pool_adds_the_lowest_losses_of_each_class_to_the_seeds():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    loss = torch.tensor([0.4, 0.1, 0.3, 0.2, 0.9, 0.5, 0.7, 0.5])
    seeds = torch.tensor([True, False, False, False, False, False, False, True])
    assert class_aware_pool(loss, y, seeds, 0).tolist() == seeds.tolist()
    # class 0: seed 0 + the 2 lowest of samples 1-3 (0.1, 0.2); class 1: seed 7 + 0.5 (5) and 0.7 (6)
    assert class_aware_pool(loss, y, seeds, 2).nonzero().flatten().tolist() == [0, 1, 3, 5, 6, 7]
    assert class_aware_pool(loss, y, seeds, 10).all()  # more than a class holds: all of it


def test_stage_boundaries():
    lengths = (3, 2, 2)
    assert [stage_of(e, lengths) for e in range(8)] == ["class_aware"] * 3 + ["class_agnostic"] * 2 + ["meta"] * 3


def test_balanced_seeds_draw_per_class_and_repeat_with_the_seed():
    y = torch.tensor([0] * 6 + [1] * 2 + [2] * 5)
    picked = balanced_seeds(y, 3, 3, seed=0)
    assert torch.bincount(y[picked], minlength=3).tolist() == [3, 2, 3]  # class 1 holds only 2
    assert torch.equal(picked, balanced_seeds(y, 3, 3, seed=0)) and torch.equal(picked, picked.sort().values)
    assert not torch.equal(picked, balanced_seeds(y, 3, 3, seed=1))


def test_locate_finds_trusted_samples_by_pixels_and_label_repeats_included():
    x = torch.tensor([1, 2, 1, 3, 1], dtype=torch.uint8).view(5, 1, 1, 1)
    train = ImageSet(x, torch.tensor([0, 0, 1, 0, 0]), ["a", "b"])
    samples = ImageSet(x[[3, 0, 0]], torch.tensor([0, 0, 0]), ["a", "b"])  # pixel 1 label 0: samples 0 and 4
    assert locate(train, samples).tolist() == [3, 0, 4]
    with pytest.raises(RuntimeError, match="not in the training set"):
        locate(train, ImageSet(x[[1]], torch.tensor([1]), ["a", "b"]))  # pixel 2 appears with label 0 only


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.Flatten())
        self.head = nn.Linear(2 * 2 * 2, 2)

    def forward(self, x):
        return self.head(self.body(x))


def test_virtual_update_trains_a_copy_on_the_chosen_layers_and_the_head():
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(20) % 2
    virtual = virtual_update(model, x, y, lr=0.1, epochs=1, batch_size=8, layers=["body.2"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    after = virtual.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"body.2.weight", "body.2.bias", "head.weight", "head.bias"}
    assert not virtual.training
    everything = virtual_update(model, x, y, lr=0.1, epochs=1, batch_size=8)
    assert all(not torch.equal(before[k], v) for k, v in everything.state_dict().items())
    with pytest.raises(ConfigError, match=r"defense\.meta\.layers"):
        virtual_update(model, x, y, lr=0.1, epochs=1, batch_size=8, layers=["layer3"])


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"seed_per_class": 0}, "defense.seed_per_class"),
        ({"step": -1}, "defense.step"),
        ({"class_aware_epochs": 0}, "defense.class_aware_epochs"),
        ({"epsilon": 1.0}, "defense.epsilon"),
        ({"meta": {"lr": 0}}, "defense.meta.lr"),
    ],
)
def test_asd_rejects_bad_settings(kw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ASD(**kw)


def test_asd_run_pool_sizes_per_stage_and_its_verdict():
    """60 samples of 3 classes (20 each), 3 trusted per class as seeds; trainer=tiny caps every
    stage at 2 epochs: class-aware 9 seeds, then 9 + 3 x 5 (step 5 every epoch); then 30 (50%)."""
    g = torch.Generator().manual_seed(0)
    train = ImageSet(
        torch.randint(0, 256, (60, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(60) % 3, list("abc")
    )
    clean = train.subset(torch.arange(0, 60, 2))  # 10 trusted samples per class, 3 drawn as seeds
    ctx = context(train, clean=clean)
    out = ASD(seed_per_class=3, step=5, step_epochs=1, epsilon=0.5, mixmatch={"batch_size": 8}).run(ctx)
    e = out.extra
    assert e["stage_epochs"] == {"class_aware": 2, "class_agnostic": 2, "meta": 2} and e["iterations"] == 2
    assert e["n_seeds"] == 9 and e["pool_sizes"] == {
        "class_aware": [9, 24],
        "class_agnostic": [30, 30],
        "meta": [30, 30],
    }
    v = out.verdict
    assert (
        int(v.kept.sum()) == 30 and int(v.trusted.sum()) == 9 and v.trusted[1::2].sum() == 0
    )  # seeds are trusted ones
    assert torch.equal(v.kept, v.scores <= v.scores[v.kept].max())  # the kept half ranks lowest
