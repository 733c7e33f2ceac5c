"""The models' `norm` option: BatchNorm keeps the models' parameters from before the option existed
bit for bit (and their logits to float32 precision); GroupNorm replaces every BatchNorm with
min(norm_groups, C) groups; bad values name their key."""

import pytest
import torch
from torch import nn

from backdoor_bench.errors import ConfigError
from backdoor_bench.models import build_model
from backdoor_bench.models.norm import norm2d
from tests.conftest import group_members

# state_dict size, sum of every state_dict entry, sum and |sum| of the train-mode logits for
# torch.manual_seed(0) and a seeded [2, 3, 16, 16] input: measured once on the models as they were
# before `norm` existed (commit 0d918e2), so `norm: batch` must reproduce them bit for bit.
BEFORE = {
    "small_cnn": (34, 655.2763781596846, 3.0294270291924477, 5.165290329605341),
    "preact_resnet18": (109, 7829.4648634612795, -1.4946333523839712, 3.811502756550908),
    "resnet18": (124, 9466.459241573782, 0.9432221539318562, 7.971259545534849),
    "resnet32": (202, 2504.575357388627, 0.13990838080644608, 9.706055752933025),
}


def build(compose, name, *overrides):
    torch.manual_seed(0)
    return build_model(compose(f"model={name}", *overrides).model, 10, 3, (0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_batch_norm_default_is_bit_identical_to_the_models_before_the_option(compose, name):
    model = build(compose, name)
    assert compose(f"model={name}").model.norm == "batch"
    sd = model.state_dict()
    n, total = len(sd), sum(float(v.double().sum()) for v in sd.values())  # before the forward moves BN stats
    out = model.train()(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))).detach().double()
    got = (n, total, float(out.sum()), float(out.abs().sum()))
    assert got[0] == BEFORE[name][0]
    assert got[1] == pytest.approx(BEFORE[name][1], rel=1e-9, abs=1e-12)  # the same parameters, bit for bit
    # the logits to float32 precision: a float32 convolution's summation order depends on the CPU's
    # kernels (the same wheel gave 1e-7 apart on two machines), not on the model
    assert got[2:] == pytest.approx(BEFORE[name][2:], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", group_members("model"))
def test_group_norm_replaces_every_batch_norm(compose, name):
    model = build(compose, name, "model.norm=group")
    bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    gn = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in build(compose, name).modules())
    assert not bn and len(gn) == n_bn > 0
    assert all(m.num_groups == min(32, m.num_channels) for m in gn)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_norm2d_exact_layers():
    assert isinstance(norm2d("batch", 8), nn.BatchNorm2d)
    g = norm2d("group", 64, 8)
    assert isinstance(g, nn.GroupNorm) and (g.num_groups, g.num_channels) == (8, 64)
    assert norm2d("group", 16).num_groups == 16  # min(32, 16): one channel per group


@pytest.mark.parametrize(
    "args, key",
    [
        (("layer", 8), "model.norm='layer'"),
        (("group", 8, 0), "model.norm_groups=0"),
        (("group", 48, 32), "model.norm_groups=32"),
    ],
)
def test_bad_norm_settings_name_their_key(args, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("'", "'")):
        norm2d(*args)


def test_bad_norm_fails_at_model_build_as_a_config_error(compose):
    with pytest.raises(ConfigError, match=r"model\.norm="):
        build(compose, "resnet18", "model.norm=instance")
