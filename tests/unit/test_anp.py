"""ANP (defenses/anp.py): the masked and perturbed BatchNorm parameters, the signed ascent step
projected onto [-eps, eps], the masks' clipping to [0, 1], the pruning rule and the config checks."""

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from backdoor_bench.defenses.anp import (
    ANP,
    ANPMasks,
    _Replacement,
    ascend_perturbation,
    clip_masks,
    masked_bn_params,
    pruned_neurons,
)
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.batchnorm import batchnorm_layers


def bn_with(weight, bias):
    bn = nn.BatchNorm2d(len(weight))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(weight)), bn.bias.copy_(torch.tensor(bias))
    return bn


def test_masked_and_perturbed_batchnorm_parameters():
    layers = [("body.1", bn_with([2.0, -1.0], [1.0, 3.0]))]
    masks, dw, db = [torch.tensor([1.0, 0.5])], [torch.tensor([0.1, -0.2])], [torch.tensor([0.4, -0.4])]
    p = masked_bn_params(layers, masks, dw, db)
    assert torch.allclose(p["body.1.weight"], torch.tensor([2.2, -0.3]))  # w (m + delta)
    assert torch.allclose(p["body.1.bias"], torch.tensor([1.4, 1.8]))  # b (1 + xi)
    plain = masked_bn_params(layers, masks)
    assert torch.allclose(plain["body.1.weight"], torch.tensor([2.0, -0.5])) and "body.1.bias" not in plain


def test_perturbation_ascends_the_sign_and_stays_in_the_budget():
    noise = torch.tensor([0.3, -0.3, 0.0, 0.1])
    ascend_perturbation(noise, torch.tensor([1.0, -2.0, 0.0, -1.0]), step=0.4, eps=0.4)
    assert torch.allclose(noise, torch.tensor([0.4, -0.4, 0.0, -0.3]))  # 0.7 and -0.7 projected onto +-0.4
    official = torch.tensor([0.3, -0.3])
    ascend_perturbation(official, torch.tensor([1.0, -2.0]), step=0.4, eps=0.4, project=False)
    assert torch.allclose(official, torch.tensor([0.7, -0.7]))  # the official code's unclipped step


def test_masks_are_clipped_to_the_unit_interval_after_their_step():
    m = nn.Parameter(torch.tensor([0.1, 0.95, 0.5]))
    opt = torch.optim.SGD([m], lr=0.2, momentum=0.9)
    m.grad = torch.tensor([1.0, -1.0, 0.0])
    opt.step()  # [-0.1, 1.15, 0.5]
    clip_masks([m])
    assert torch.equal(m.detach(), torch.tensor([0.0, 1.0, 0.5]))


def test_neurons_below_the_threshold_are_pruned():
    layers = [("a", nn.BatchNorm2d(2)), ("b", nn.BatchNorm2d(3))]
    masks = [torch.tensor([0.1, 0.5]), torch.tensor([0.25, 0.19, 0.2])]
    assert pruned_neurons(layers, masks, 0.2) == {"a": [0], "b": [1]}


def tiny_bn_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def test_mask_training_keeps_masks_in_range_and_leaves_the_model_alone():
    model = tiny_bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    module = ANPMasks(model, eps=0.4, steps=2, alpha=0.2, lr=0.2, momentum=0.9, seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (20, 1, 6, 6), dtype=torch.uint8, generator=g), torch.randint(0, 3, (20,), generator=g)
    loader = _Replacement(x, y, batch_size=8, per_epoch=5, augment=None, device="cpu", seed=0)
    pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    ).fit(module, train_dataloaders=loader)
    m = module.masks[0].detach()
    assert ((m >= 0) & (m <= 1)).all() and not torch.equal(m, torch.ones(4))  # trained, clipped
    for p in (module.noise_w[0], module.noise_b[0]):
        assert p.detach().abs().max() <= 0.4 + 1e-6
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights frozen: only masks learn


def test_a_model_without_batchnorm_is_a_clear_error():
    with pytest.raises(ConfigError, match="no BatchNorm2d"):
        batchnorm_layers(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), "ANP")


@pytest.mark.parametrize(
    "kw, key",
    [({"eps": -0.1}, "defense.eps"), ({"alpha": 1.5}, "defense.alpha"), ({"threshold": 2}, "defense.threshold")],
)
def test_bad_values_name_their_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        ANP(**kw)
