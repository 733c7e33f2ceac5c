"""NAD: the attention map and loss on small tensors, the model's default layers, a bad layer name,
and the distillation step's loss."""

import math

import pytest
import torch

from backdoor_bench.data import ImageSet
from backdoor_bench.defenses.nad import NAD, AttentionDistillation, attention_loss, attention_map, default_layers
from backdoor_bench.errors import ConfigError
from backdoor_bench.models import build_model
from backdoor_bench.training.features import captured
from tests.conftest import group_members
from tests.unit.contexts import context


def test_attention_map_is_the_normalised_channel_mean_of_the_powered_map():
    fm = torch.tensor([[[[-2.0, 2.0], [0.0, 0.0]], [[math.sqrt(2.0), 2.0], [0.0, 0.0]]]])  # [1, 2, 2, 2]
    # p = 2: channel means of the squares [3, 4, 0, 0], norm 5
    assert torch.allclose(attention_map(fm), torch.tensor([[0.6, 0.8, 0.0, 0.0]]), atol=1e-6)
    fm1 = torch.tensor([[[[3.0, -4.0]], [[3.0, 4.0]]]])  # p = 1: |.| means [3, 4]
    assert torch.allclose(attention_map(fm1, p=1.0), torch.tensor([[0.6, 0.8]]), atol=1e-6)
    assert attention_map(torch.zeros(2, 3, 2, 2)).abs().sum() == 0  # eps: no division by zero


def test_attention_loss_is_the_mean_squared_difference_of_the_maps():
    s = torch.tensor([[[[3.0, 4.0], [0.0, 0.0]]]]).sqrt()  # map [0.6, 0.8, 0, 0]
    t = torch.tensor([[[[4.0, 3.0], [0.0, 0.0]]]]).sqrt()  # map [0.8, 0.6, 0, 0]
    assert attention_loss(s, t).item() == pytest.approx(0.02, abs=1e-6)  # (0.04 + 0.04) / 4
    assert attention_loss(5 * s, s).item() == pytest.approx(0.0, abs=1e-9)  # scale-free
    s.requires_grad_(True)
    t.requires_grad_(True)
    attention_loss(s, t).backward()
    assert t.grad is None and s.grad is not None  # the teacher is a fixed target


@pytest.mark.parametrize("name", group_members("model"))
def test_every_model_has_default_layers_of_three_stages(compose, name):
    model = build_model(compose(f"model={name}").model, 10, 1, (0.5,), (0.5,))
    layers = default_layers(model)
    with captured(model, layers) as out:
        model(torch.rand(2, 1, 16, 16))
    sizes = [out[n].shape[-1] for n in layers]
    assert len(layers) == 3 and all(out[n].ndim == 4 for n in layers) and sizes == sorted(sizes, reverse=True)
    assert not any(m._forward_hooks for m in model.modules())  # removed on exit


def test_a_step_adds_beta_weighted_attention_losses_to_the_ce():
    torch.manual_seed(0)
    model = build_model({"_target_": "backdoor_bench.models.small_cnn.SmallCNN", "width": 4}, 2, 1, (0.5,), (0.5,))
    teacher = build_model({"_target_": "backdoor_bench.models.small_cnn.SmallCNN", "width": 4}, 2, 1, (0.5,), (0.5,))
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    layers = ["backbone.body.1", "backbone.body.6"]
    with captured(model, layers) as s_out, captured(teacher, layers) as t_out:
        module = AttentionDistillation(model, teacher, s_out, t_out, layers, [10.0, 100.0], 2.0, {"lr": 0.1}, 1)
        module.log_dict = lambda *a, **k: None
        loss = module.training_step({"x": x, "y": y}, 0)
        teacher.eval()
        expected = torch.nn.functional.cross_entropy(model(x), y)
        with torch.no_grad():
            teacher(x)
        expected = expected + sum(b * attention_loss(s_out[n], t_out[n]) for b, n in zip([10.0, 100.0], layers))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_nad_runs_on_a_tiny_context_and_names_a_bad_layer():
    g = torch.Generator().manual_seed(0)
    train = ImageSet(
        torch.randint(0, 255, (40, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(40) % 2, ["0", "1"]
    )
    ctx = context(train, clean=train.subset(torch.arange(10)))
    out = NAD(epochs=2, teacher_epochs=1, batch_size=4).run(ctx)
    assert out.extra["layers"] == ["backbone.body.1", "backbone.body.4", "backbone.body.6"]
    assert not any(m._forward_hooks for m in out.model.modules())
    with pytest.raises(ConfigError, match="defense.layers='backbone.nope'.*backbone.body.1"):
        NAD(layers=["backbone.nope"], betas=[1.0]).run(ctx)


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"layers": ["a", "b"], "betas": [1.0]}, "defense.layers"),
        ({"betas": [-1.0]}, "defense.betas"),
        ({"p": 0}, "defense.p"),
        ({"teacher_epochs": 0}, "defense.teacher_epochs"),
        ({"batch_size": 0}, "defense.batch_size"),
        ({"optimizer": {"name": "rmsprop", "lr": 0.1}}, "defense.optimizer.name"),
        ({"teacher_optimizer": {"name": "sgd", "lr": 0}}, "defense.teacher_optimizer.lr"),
    ],
)
def test_bad_values_fail_naming_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        NAD(**kw)


def test_a_model_without_default_layers_asks_for_them():
    with pytest.raises(ConfigError, match="defense.layers=null"):
        default_layers(torch.nn.Linear(2, 2))


def test_integer_layers_index_the_models_default(compose):
    from backdoor_bench.defenses.nad import pick_layers

    model = build_model(compose("model=small_cnn").model, 10, 1, (0.5,), (0.5,))
    assert pick_layers(model, [-1]) == ["backbone.body.6"]
    assert pick_layers(model, [0, "backbone.body.4"]) == ["backbone.body.1", "backbone.body.4"]
    assert pick_layers(model, None) == ["backbone.body.1", "backbone.body.4", "backbone.body.6"]
    with pytest.raises(ConfigError, match="index 3 is outside"):
        pick_layers(model, [3])
