"""Fine-Pruning: the pruning order, the stopping rule, the last feature map of every model, and the
fixed channel mask surviving fine-tuning on the clean subset."""

import pytest
import torch
from torch import nn

from backdoor_bench.data import ImageSet
from backdoor_bench.defenses.fp import FinePruning, attach_channel_mask, prune_until, pruning_order
from backdoor_bench.errors import ConfigError
from backdoor_bench.models import ImageClassifier, build_model
from backdoor_bench.training.features import last_feature_map
from tests.conftest import group_members
from tests.unit.contexts import context


def test_pruning_order_is_increasing_mean_activation_ties_by_index():
    features = torch.tensor([[3.0, 0.0, 1.0, 5.0, 1.0], [1.0, 0.0, 3.0, 1.0, 3.0]])  # means 2, 0, 2, 3, 2
    assert pruning_order(features).tolist() == [1, 0, 2, 4, 3]


def test_prune_until_keeps_the_last_count_within_the_relative_drop():
    order = torch.tensor([2, 0, 3, 1])
    seen = []

    def accuracy(pruned):
        seen.append(pruned.nonzero().flatten().tolist())
        return [1.0, 0.95, 0.91, 0.89][int(pruned.sum())]

    k, accs = prune_until(order, accuracy, 0.1)
    assert k == 2 and accs == [1.0, 0.95, 0.91, 0.89]  # 0.89 is an 11% drop: stop, keep 2 pruned
    assert seen == [[], [2], [0, 2], [0, 2, 3]]  # pruned cumulatively in the given order
    k, accs = prune_until(order, lambda pruned: 1.0, 0.1)
    assert k == 3 and len(accs) == 4  # never all channels
    assert prune_until(order, lambda pruned: 1.0 - 0.5 * bool(pruned.any()), 0.1)[0] == 0


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(3, 2)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def test_the_channel_mask_zeroes_its_channels_and_follows_the_model():
    model = Net()
    with torch.no_grad():
        model.body[0].weight.fill_(1.0), model.body[0].bias.fill_(1.0)  # every channel active
    attach_channel_mask(model.body[1], 3)
    model.body[1].channel_mask[1] = 0.0
    x = torch.rand(4, 1, 5, 5)
    f = model.features(x)
    assert (f[:, 1] == 0).all() and (f[:, [0, 2]] > 1).all()
    assert "body.1.channel_mask" in model.state_dict()
    assert model.to(torch.float64).body[1].channel_mask.dtype == torch.float64


@pytest.mark.parametrize("name", group_members("model"))
def test_the_last_feature_map_feeds_the_features(compose, name):
    model = build_model(compose(f"model={name}").model, 10, 1, (0.5,), (0.5,))
    expected = {
        "small_cnn": "backbone.body.6",
        "preact_resnet18": "backbone.bn",
        "resnet18": "backbone.net.layer4",
        "resnet32": "backbone.layer3",
    }[name]
    x = torch.rand(3, 1, 16, 16)
    assert last_feature_map(model, x) == expected
    module = dict(model.named_modules())[expected]
    attach_channel_mask(module, model.features(x).shape[1])
    module.channel_mask[:5] = 0.0
    model.eval()
    assert (model.features(x)[:, :5] == 0).all() and (model.features(x)[:, 5:] != 0).any()


def _digits_like(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randint(0, 60, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    x[y == 1, :, :4] += 150  # class 1: a bright top half
    return ImageSet(x, y, ["0", "1"])


def test_fine_pruning_keeps_pruned_channels_zero_through_fine_tuning():
    train = _digits_like()
    ctx = context(train, clean=train.subset(torch.arange(20)))
    out = FinePruning(acc_drop=0.5, epochs=2, batch_size=8).run(ctx)
    e = out.extra
    assert e["layer"] == "backbone.body.6" and e["channels"] == 128 and 0 <= e["pruned"] < 128
    assert len(e["pruned_channels"]) == e["pruned"]
    assert e["clean_acc_pruned"] >= (1 - 0.5) * e["clean_acc_unpruned"]
    model = out.model.eval()
    assert isinstance(model, ImageClassifier)
    f = model.features(train.x.float() / 255)
    assert (f[:, e["pruned_channels"]] == 0).all()
    kept = sorted(set(range(128)) - set(e["pruned_channels"]))
    assert (f[:, kept] != 0).any()


def test_bad_values_fail_naming_the_key():
    with pytest.raises(ConfigError, match="defense.acc_drop"):
        FinePruning(acc_drop=1.5)
    with pytest.raises(ConfigError, match="defense.epochs"):
        FinePruning(epochs=0)
    with pytest.raises(ConfigError, match="defense.optimizer.schedule"):
        FinePruning(optimizer={"name": "sgd", "lr": 0.1, "schedule": "poly"})
