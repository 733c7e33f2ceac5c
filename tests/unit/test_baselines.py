"""The ISPL paper's baselines on hand-made features: Spectral Signatures and Activation Clustering recover
a planted cluster exactly, ITLM keeps exact counts; ResNet-32 and the layer-feature hook."""

import pytest
import torch
from torch import nn

from backdoor_bench.data import ImageSet
from backdoor_bench.defenses.ac import ActivationClustering, activation_clustering
from backdoor_bench.defenses.itlm import ITLM, trimmed_rounds
from backdoor_bench.defenses.spectral import (
    SpectralSignatures,
    spectral_scores,
    top_share_per_class,
)
from backdoor_bench.errors import ConfigError
from backdoor_bench.models import ImageClassifier
from backdoor_bench.models.resnet_cifar import ResNet32
from backdoor_bench.training.features import layer_features, shape_activations
from tests.unit.contexts import RecordingRunner, context


def planted(n_clean=90, n_poison=10, dim=16, shift=8.0, seed=0):
    """Class 0: `n_clean` clean points and `n_poison` shifted ones (indices n_clean.. of class 0);
    class 1: 100 clean points. Returns (h, y, poison indices)."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n_clean + n_poison + 100, dim, generator=g)
    h[n_clean : n_clean + n_poison, 0] += shift
    y = torch.tensor([0] * (n_clean + n_poison) + [1] * 100)
    return h, y, torch.arange(n_clean, n_clean + n_poison)


def test_spectral_scores_are_squared_projections_on_the_top_direction():
    h = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 0, 1, 1])
    assert torch.allclose(spectral_scores(h, y), torch.tensor([4.0, 0.0, 4.0, 1.0, 1.0]))


def test_spectral_removes_exactly_the_planted_cluster():
    h, y, poison = planted()
    flagged = top_share_per_class(spectral_scores(h, y), y, 0.1)
    assert torch.equal(flagged[y == 0].nonzero().flatten(), poison)
    assert int(flagged[y == 1].sum()) == 10  # every class loses its share, poisoned or not


def test_spectral_share_is_rounded_per_class():
    y = torch.tensor([0] * 20 + [1] * 7)
    flagged = top_share_per_class(torch.arange(27.0), y, 0.15)
    assert flagged[:20].sum() == 3 and flagged[20:].sum() == 1  # round(3.0), round(1.05)
    assert flagged[17:20].all() and flagged[26]  # the highest scores


@pytest.mark.parametrize("reduce", ["ica", "pca"])
def test_ac_removes_exactly_the_planted_cluster(reduce):
    h, y, poison = planted()
    removed, scores, report = activation_clustering(h, y, reduce=reduce)
    assert torch.equal(removed.nonzero().flatten(), poison)  # class 1 splits about evenly: kept
    assert report[0][0] == 0.1 and report[1][0] > 0.35
    assert torch.allclose(scores[poison], torch.tensor(0.9)) and scores[y == 0].min() == pytest.approx(0.1)


def test_ac_silhouette_criterion_and_the_always_smaller_setting():
    h, y, poison = planted()
    removed, _, report = activation_clustering(h, y, criterion="silhouette", size_threshold=0.5)
    assert torch.equal(removed.nonzero().flatten(), poison)
    assert report[0][1] > 0.1 > report[1][1]  # class 1's smaller cluster is small enough, but not apart
    removed, _, _ = activation_clustering(h, y, criterion="silhouette", silhouette_threshold=0.99)
    assert not removed.any()  # a clear split, but not clear enough for this threshold
    removed, _, report = activation_clustering(h, y, size_threshold=0.5)  # ART's "smaller"
    assert removed[poison].all() and int(removed[y == 1].sum()) == round(100 * report[1][0])


def test_ac_leaves_tiny_and_constant_classes_alone():
    h = torch.cat([torch.ones(5, 4), torch.randn(2, 4)])
    removed, _, report = activation_clustering(h, torch.tensor([0] * 5 + [1] * 2), size_threshold=0.5)
    assert not removed.any() and 1 not in report and report[0] == (0.0, None)


def test_itlm_trimmed_rounds_keep_exact_counts():
    seen = []

    def round_loss(kept, r):
        seen.append(int(kept.sum()))
        return torch.arange(100.0).flip(0) if r == 1 else torch.arange(100.0)  # round 1: reversed order

    history, loss = trimmed_rounds(100, 3, 96, round_loss)
    assert seen == [100, 96, 96] and [int(k.sum()) for k in history] == [96, 96, 96]
    assert not history[0][96:].any() and not history[1][:4].any() and torch.equal(history[2], history[0])
    assert torch.equal(loss, torch.arange(100.0))


class ConstantClassifier(nn.Module):
    """Predicts class 0 for every image, with confidence."""

    def forward(self, x):
        return torch.tensor([5.0, 0.0]).expand(len(x), 2)


def test_itlm_run_trains_fresh_models_on_the_kept_set():
    y = torch.tensor([0] * 45 + [1] * 5)  # the label-1 samples lose under a class-0 model
    train = ImageSet(torch.zeros(50, 1, 4, 4, dtype=torch.uint8), y, ["0", "1"])
    RecordingRunner.calls, RecordingRunner.model = [], ConstantClassifier()
    ctx = context(train, "trainer.max_stage_epochs=3", runner_class=RecordingRunner)
    out = ITLM(rounds=3, expected_poison_rate=0.25, trim_factor=0.4, first_epochs=2, epochs=40).run(ctx)
    assert RecordingRunner.calls == [(50, "itlm0", 2), (45, "itlm1", 3), (45, "itlm2", 3), (45, "retrain", None)]
    assert torch.equal(out.verdict.kept, y == 0) and out.extra["changed_per_round"] == [0, 0]


def test_resnet32_shape_and_parameter_count():
    model = ResNet32(num_classes=10)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10) and model.features(torch.rand(2, 3, 32, 32)).shape == (
        2,
        64,
    )
    # 464,154 with option-A shortcuts (He et al.'s 0.46M) + 2 x (1x1 conv + batch norm): 16*32+64 + 32*64+128
    assert sum(p.numel() for p in model.parameters()) == 464_154 + 2_752
    assert len(model.layer3) == 5 and ResNet32(3, in_channels=1)(torch.rand(1, 1, 16, 16)).shape == (1, 3)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 2)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def test_shape_activations_flatten_and_pool_exact():
    out = torch.arange(16.0).reshape(2, 2, 2, 2)  # [N=2, C=2, H=2, W=2]
    assert shape_activations(out).tolist() == [
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        [8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0],
    ]  # channel-major: channel 0's 4 units, then channel 1's
    assert shape_activations(out, "pool").tolist() == [[1.5, 5.5], [9.5, 13.5]]
    vec = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert shape_activations(vec, "pool").tolist() == vec.tolist()  # a vector stays as it is
    assert shape_activations(torch.zeros(2, 3, 4)).shape == (2, 12)
    with pytest.raises(ConfigError, match="defense.activations"):
        shape_activations(out, "max")


def test_spectral_on_flattened_maps_sees_a_local_trigger_that_pooling_hides():
    """Class 0: 8 clean maps and 2 whose unit (0, 0, 0) is raised and unit (0, 1, 1) lowered by
    the same amount (a local 'trigger' with zero channel mean). Pooled, the poisoned maps equal
    the clean ones; flattened, they are the top spectral scores."""
    g = torch.Generator().manual_seed(0)
    maps = 0.1 * torch.randn(10, 1, 2, 2, generator=g)
    maps[8:, 0, 0, 0] += 5.0
    maps[8:, 0, 1, 1] -= 5.0
    y = torch.zeros(10, dtype=torch.long)
    flat = top_share_per_class(spectral_scores(shape_activations(maps), y), y, 0.2)
    assert flat.nonzero().flatten().tolist() == [8, 9]
    pooled = shape_activations(maps, "pool")
    assert torch.allclose(pooled[8:].mean(), pooled[:8].mean(), atol=0.2)


def test_layer_features_hooks_a_named_layer():
    torch.manual_seed(0)
    model = ImageClassifier(Tiny(), (0.5,), (0.5,)).eval()
    x = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8)
    xf = (x.float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        relu = model.backbone.body[:2](xf)
        assert torch.allclose(
            layer_features(model, x, "backbone.body.1", batch_size=2), relu.flatten(1)
        )  # the default: the whole map
        assert torch.allclose(
            layer_features(model, x, "backbone.body.1", batch_size=2, activations="pool"),
            relu.mean((2, 3)),
        )
        assert torch.allclose(
            layer_features(model, x, "backbone.body.0", activations="pool"),
            model.backbone.body[0](xf).mean((2, 3)),
        )
        assert torch.allclose(layer_features(model, x, "backbone.head"), model(x.float() / 255))  # 2-D kept
        assert torch.allclose(layer_features(model, x), model.features(x.float() / 255))  # None: penultimate
    assert not model.backbone.body[1]._forward_hooks  # the hook is removed again
    for bad in ("backbone.body.9", ""):
        with pytest.raises(ConfigError, match="defense.layer.*backbone.body.1"):
            layer_features(model, x, bad)


def test_last_map_is_the_flattened_map_before_the_global_pooling():
    """`layer="last_map"` (Spectral's default) is small_cnn's last conv block, flattened: the map
    whose channel means are the penultimate features."""
    from backdoor_bench.models.small_cnn import SmallCNN
    from backdoor_bench.training.features import layer_name

    torch.manual_seed(0)
    model = ImageClassifier(SmallCNN(num_classes=3, in_channels=1, width=4), (0.5,), (0.5,)).eval()
    x = torch.randint(0, 256, (5, 1, 16, 16), dtype=torch.uint8)
    assert layer_name(model, x, "last_map") == "backbone.body.6"
    assert layer_name(model, x, None) is None and layer_name(model, x, "backbone.body.1") == "backbone.body.1"
    h = layer_features(model, x, "last_map", batch_size=2)
    assert h.shape == (5, 16 * 4 * 4)  # 4w channels at 4 x 4
    assert torch.equal(h, layer_features(model, x, "backbone.body.6", batch_size=2))
    assert torch.allclose(h.reshape(5, 16, 16).mean(2), layer_features(model, x), atol=1e-6)


@pytest.mark.parametrize(
    "cls, kw, key",
    [
        (SpectralSignatures, {"expected_poison_rate": 0.8}, "removal_factor"),
        (SpectralSignatures, {"expected_poison_rate": 0}, "expected_poison_rate"),
        (SpectralSignatures, {"activations": "max"}, "defense.activations"),
        (ActivationClustering, {"activations": "max"}, "defense.activations"),
        (ActivationClustering, {"reduce": "tsne"}, "defense.reduce"),
        (ActivationClustering, {"criterion": "gap"}, "defense.criterion"),
        (ActivationClustering, {"size_threshold": 0.7}, "defense.size_threshold"),
        (ActivationClustering, {"components": 0}, "defense.components"),
        (ITLM, {"trim_factor": 10.0}, "defense.trim_factor"),
        (ITLM, {"rounds": 0}, "defense.rounds"),
    ],
)
def test_baselines_reject_bad_settings(cls, kw, key):
    with pytest.raises(ConfigError, match=key):
        cls(**kw)


def test_a_bad_layer_stops_the_run_before_training(compose):
    from backdoor_bench.validate import validate

    with pytest.raises(ConfigError, match="backbone.body.3"):
        validate(compose("defense=spectral", "defense.layer=backbone.nope"))
    validate(compose("defense=ac", "model=resnet32", "defense.layer=backbone.layer3.1"))
    validate(compose("defense=ac", "defense.layer=last_map"))  # resolved on the model at run time
    cfg = compose(
        "defense=spectral",
        "attack=dirty_label",
        "attack.poison_rate=0.2",
        "defense.expected_poison_rate=${attack.poison_rate}",
    )
    assert cfg.defense.expected_poison_rate == 0.2  # tied to the scenario's rate
