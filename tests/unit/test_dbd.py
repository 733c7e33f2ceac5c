"""DBD's pieces: the high-credible split, the SimCLR views, head-only warm-up, loss ranking."""

import pytest
import torch

from backdoor_bench.data.augment import CropFlip, SimCLRViews
from backdoor_bench.defenses.dbd import DBD, high_credible
from backdoor_bench.errors import ConfigError
from backdoor_bench.models import ImageClassifier
from backdoor_bench.models.small_cnn import SmallCNN
from backdoor_bench.training.fit import fit, per_sample_loss
from backdoor_bench.training.losses import cross_entropy
from backdoor_bench.training.simclr import SimCLR
from backdoor_bench.training.supervised import Supervised
from tests.unit.test_training import tcfg


def test_high_credible_keeps_the_lowest_losses():
    keep = high_credible(torch.tensor([3.0, 1.0, 2.0, 0.0]), 0.5)
    assert keep.tolist() == [False, True, False, True]
    assert high_credible(torch.tensor([1.0, 1.0, 1.0]), 1 / 3).tolist() == [True, False, False]  # ties: by index


@pytest.mark.parametrize("channels", [1, 3])
def test_simclr_views_are_random_valid_images(channels):
    torch.manual_seed(0)
    x = torch.rand(16, channels, 16, 16)
    views = SimCLRViews(16, channels)
    a, b = views(x), views(x)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, b) and not torch.allclose(a, x)


def test_head_only_training_leaves_the_backbone_weights_but_not_its_bn_statistics():
    torch.manual_seed(0)
    model = ImageClassifier(SmallCNN(2, 1, 4), (0.5,), (0.5,))
    x = torch.randint(0, 255, (32, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(32) % 2
    conv = [p.clone() for n, p in model.backbone.named_parameters() if not n.startswith("head")]
    head = model.head.weight.clone()
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in bn]
    opt = {"name": "adam", "lr": 0.01, "schedule": "constant"}
    fit(
        Supervised(model, opt, 1, loss="sce", loss_args={"alpha": 0.1, "beta": 1.0}, head_only=True),
        x,
        y,
        tcfg(),
        max_epochs=1,
    )
    after = [p for n, p in model.backbone.named_parameters() if not n.startswith("head")]
    assert all(torch.equal(a, b) for a, b in zip(conv, after))
    assert not torch.equal(head, model.head.weight)
    assert bn and any(not torch.equal(s, m.running_mean) for s, m in zip(stats, bn))


def test_per_sample_loss_matches_the_loss_and_restores_train_mode():
    torch.manual_seed(0)
    model = ImageClassifier(SmallCNN(3, 1, 4), (0.5,), (0.5,)).train()
    x = torch.randint(0, 255, (10, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(10) % 3
    losses = per_sample_loss(model, x, y, cross_entropy, batch_size=4)
    model.eval()
    with torch.no_grad():
        expected = cross_entropy(model(x.float() / 255), y, reduction="none")
    assert torch.allclose(losses, expected, atol=1e-5)
    model.train()
    augmented = per_sample_loss(model, x, y, cross_entropy, augment=CropFlip(2, False), seed=1)
    assert model.training and augmented.shape == (10,) and not torch.allclose(augmented, losses)
    assert torch.equal(augmented, per_sample_loss(model, x, y, cross_entropy, augment=CropFlip(2, False), seed=1))


def test_simclr_step_trains_the_backbone_not_the_head():
    torch.manual_seed(0)
    model = ImageClassifier(SmallCNN(2, 1, 4), (0.5,), (0.5,))
    head = model.head.weight.clone()
    module = SimCLR(model, SimCLRViews(8, 1), {"name": "sgd", "lr": 0.1, "schedule": "cosine"}, 10)
    x = torch.randint(0, 255, (16, 1, 8, 8), dtype=torch.uint8)
    fit(module, x, torch.zeros(16, dtype=torch.long), tcfg(), max_epochs=1)
    assert torch.equal(head, model.head.weight)
    assert torch.isfinite(torch.stack([p.sum() for p in model.parameters()])).all()


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"variant": "nope"}, "defense.variant"),
        ({"loss": "mse"}, "defense.loss"),
        ({"epsilon": 1.0}, "defense.epsilon"),
        ({"warmup_epochs": 0}, "warmup_epochs"),
    ],
)
def test_dbd_rejects_bad_settings(kw, key):
    with pytest.raises(ConfigError, match=key):
        DBD(**kw)
