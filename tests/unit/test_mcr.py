"""MCR (defenses/mcr.py): the Bezier curve's points, the official schedule, the control point's
training, and the BatchNorm statistics recomputed at a point (training/batchnorm.py)."""

import pytest
import torch
from torch import nn

from backdoor_bench.defenses.mcr import MCR, BezierCurve, bezier, curve_lr_factor, curve_point
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.batchnorm import recompute_bn_statistics


def test_bezier_points():
    w0, theta, w1 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0]), torch.tensor([4.0, 4.0])
    assert torch.equal(bezier(w0, theta, w1, 0.0), w0) and torch.equal(bezier(w0, theta, w1, 1.0), w1)
    assert torch.allclose(bezier(w0, theta, w1, 0.5), torch.tensor([1.5, 2.0]))  # 0.5 theta + 0.25 w1
    assert torch.allclose(bezier(w0, theta, w1, 0.3), torch.tensor([0.78, 1.2]))  # 0.42 theta + 0.09 w1


def test_the_official_curve_schedule():
    f = [curve_lr_factor(e, 10) for e in range(10)]
    assert f[:5] == [1.0] * 5 and f[5] == pytest.approx(1 - 0.25 * 0.99) and f[8:] == pytest.approx([0.01, 0.01])


def test_batchnorm_statistics_are_the_size_weighted_averages_over_batches():
    bn = nn.BatchNorm2d(1)
    model = nn.Sequential(bn)
    b1 = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1)  # mean 2, unbiased var 1
    b2 = torch.tensor([10.0, 12.0]).view(1, 1, 1, 2)  # one image: mean 11, unbiased var 2
    recompute_bn_statistics(model, [b1, b2])
    assert bn.running_mean.item() == pytest.approx((3 * 2 + 1 * 11) / 4)
    assert bn.running_var.item() == pytest.approx((3 * 1 + 1 * 2) / 4)
    assert bn.momentum == 0.1 and not model.training


def test_curve_point_and_the_control_point_training():
    start = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    end = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    curve = BezierCurve(start, end, lr=0.1, momentum=0.0, weight_decay=0.0, epochs=1)
    w0, theta, w1 = curve.end_points()
    name = "0.weight"
    assert torch.allclose(theta[name], (start[0].weight + end[0].weight) / 2)  # linear initialisation
    assert torch.equal(curve.weights(0.0)[name], start[0].weight) and torch.equal(
        curve.weights(1.0)[name], end[0].weight
    )
    point = curve_point(start, w0, theta, w1, 0.3)
    assert torch.allclose(point[0].weight, 0.49 * start[0].weight + 0.42 * theta[name] + 0.09 * end[0].weight)
    loss = curve.training_step({"x": torch.rand(4, 1, 5, 5), "y": torch.tensor([0, 1, 0, 1])}, 0)
    loss.backward()
    assert all(p.grad is not None for p in curve.theta) and all(p.grad is None for p in curve.model.parameters())


def test_bad_values_name_their_key():
    with pytest.raises(ConfigError, match="defense.t"):
        MCR(t=1.5)
    with pytest.raises(ConfigError, match="defense.curve.epochs"):
        MCR(curve={"epochs": 0})
