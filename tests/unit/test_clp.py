"""CLP (defenses/clp.py): each channel's upper bound of its Lipschitz constant, the mean + u x std
rule, the conv / BatchNorm pairing on the project's models, and the pruning."""

import pytest
import torch
from torch import nn

from backdoor_bench.defenses.clp import CLP, channel_lipschitz_bounds, clp_prune, outlying_channels
from backdoor_bench.errors import ConfigError
from backdoor_bench.models.preact_resnet import PreActResNet18
from backdoor_bench.models.resnet_cifar import ResNet32
from backdoor_bench.models.small_cnn import SmallCNN
from backdoor_bench.training.batchnorm import conv_bn_pairs


def test_channel_upper_bound_is_gamma_over_sigma_times_the_largest_singular_value():
    w = torch.tensor(
        [
            [[[3.0, 0.0]], [[0.0, 4.0]]],  # [[3, 0], [0, 4]]: sigma_max 4
            [[[1.0, 1.0]], [[1.0, 1.0]]],  # all ones, rank 1: sigma_max 2
            [[[0.0, 0.0]], [[0.0, -5.0]]],  # sigma_max 5
        ]
    )  # [3 out, 2 in, 1, 2]
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]) - bn.eps)  # sigma = 2, 1, 0.5
    assert torch.allclose(channel_lipschitz_bounds(w, bn), torch.tensor([2.0, 4.0, 5.0]))


def test_outliers_are_above_mean_plus_u_sample_stds():
    uclc = torch.cat([torch.ones(20), torch.tensor([10.0])])  # mean 1.4286, std (n - 1) 1.9640
    assert outlying_channels(uclc, 3.0).tolist() == [20]  # 10 > 7.32
    assert outlying_channels(uclc, 5.0).tolist() == []  # 10 < 11.25
    assert outlying_channels(torch.tensor([1.0, 1.0, 1.0, 1.0, 10.0]), 3.0).tolist() == []  # 10 < 2.8 + 3 x 4.02


@pytest.mark.parametrize("model, n", [(SmallCNN(), 5), (ResNet32(), 33), (PreActResNet18(width=16), 17)])
def test_every_batchnorm_is_paired_with_a_convolution_of_its_width(model, n):
    pairs = conv_bn_pairs(model)
    assert len(pairs) == n  # PreAct: 17 of 17 (a block's bn1 with the convolution registered before it)
    assert all(conv.out_channels == bn.num_features for _, conv, bn in pairs)


def test_clp_zeroes_the_outlying_channel_and_only_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 21, 3, bias=False), nn.BatchNorm2d(21), nn.ReLU())
    with torch.no_grad():
        model[0].weight.fill_(0.1)
        model[0].weight[7] *= 50  # one channel amplifies its input 50 times more
        model[1].bias.fill_(0.5)
    pruned = clp_prune(model, 3.0)
    assert pruned == {"1": [7]}
    assert model[1].weight[7] == 0 and model[1].bias[7] == 0
    assert (model[1].weight[torch.arange(21) != 7] == 1).all() and (model[1].bias[torch.arange(21) != 7] == 0.5).all()


def test_clp_needs_batchnorm_and_a_sane_u():
    with pytest.raises(ConfigError, match="no BatchNorm2d"):
        clp_prune(nn.Sequential(nn.Conv2d(1, 2, 3)), 3.0)
    with pytest.raises(ConfigError, match="defense.u"):
        CLP(u=-1)
