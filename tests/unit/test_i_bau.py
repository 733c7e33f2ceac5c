"""I-BAU (defenses/i_bau.py): the inner maximisation's step (sign, regulariser, clamp), the L2
projection, and the fixed-point hypergradient against its closed form."""

import pytest
import torch
from torch import nn

from backdoor_bench.defenses.i_bau import (
    IBAU,
    IBAUnlearning,
    fixed_point_hypergradient,
    inner_step,
    project_l2,
    universal_perturbation,
)
from backdoor_bench.errors import ConfigError


def test_inner_step_ascends_the_cross_entropy():
    model = nn.Flatten()  # logits = the two pixels
    x, y = torch.full((1, 1, 1, 2), 0.5), torch.tensor([0])
    d1 = inner_step(model, torch.zeros(1, 1, 1, 2), x, y, lr=10.0, reg=0.001)
    # d(-CE)/d delta = onehot - softmax = [0.5, -0.5]; the regulariser's gradient is 0 at delta = 0
    assert torch.allclose(d1.flatten(), torch.tensor([-5.0, 5.0]))
    # x + delta = [-4.5, 5.5] is clamped to [0, 1]: only the regulariser moves delta, by -lr x 2 reg delta
    d2 = inner_step(model, d1, x, y, lr=10.0, reg=0.001)
    assert torch.allclose(d2.flatten(), torch.tensor([-4.9, 4.9]))
    d3 = inner_step(model, d1, x, y, lr=10.0, reg=0.001, clamp=False)  # unclamped, the CE still pulls
    p = torch.softmax(torch.tensor([-4.5, 5.5]), 0)
    assert torch.allclose(
        d3.flatten(),
        torch.tensor([-5.0, 5.0]) - 10 * (torch.tensor([1.0, 0.0]) - p - 0.002 * torch.tensor([5.0, -5.0])),
    )


def test_l2_projection():
    d = torch.tensor([3.0, 4.0])
    assert torch.allclose(project_l2(d, 1.0), torch.tensor([0.6, 0.8]))
    assert torch.equal(project_l2(d, 10.0), d) and torch.equal(project_l2(d, None), d)


def test_universal_perturbation_is_projected():
    model = nn.Flatten()
    batches = [(torch.full((2, 1, 1, 2), 0.5), torch.tensor([0, 0]))]
    d = universal_perturbation(model, batches, lr=10.0, reg=0.0, radius=1.0, clamp=False)
    assert d.norm().item() == pytest.approx(1.0)
    assert d.flatten()[0] < 0 < d.flatten()[1]  # away from the predicted class 0 (logits tie -> argmax 0)


@pytest.mark.parametrize("K, expected", [(1, 1.0), (2, 1.5), (3, 1.75)])
def test_fixed_point_hypergradient_is_the_neumann_series(K, expected):
    # inner update Phi(d) = d - a (d - theta): fixed point d* = theta; outer O(d, theta) = d^2 + 3 theta;
    # dO(d*(theta), theta)/dtheta = 2 theta + 3 exactly; K Neumann terms: 2 d (1 - (1 - a)^K) + 3
    theta = torch.tensor(1.0, requires_grad=True)
    a = 0.5
    (g,) = fixed_point_hypergradient(
        torch.tensor(1.0), [theta], lambda d: d - a * (d - theta), lambda d: d**2 + 3 * theta, K
    )
    assert g.item() == pytest.approx(expected + 3.0)


def test_bad_values_name_their_key():
    with pytest.raises(ConfigError, match="defense.perturbed_share"):
        IBAU(perturbed_share=0.0)
    with pytest.raises(ConfigError, match="defense.K"):
        IBAU(K=0)


@pytest.mark.parametrize("share, n, expected", [(1.0, 72, 72), (0.01, 72, 1), (0.01, 256, 2), (0.5, 7, 3)])
def test_the_perturbed_share_of_an_outer_batch(share, n, expected):
    module = IBAUnlearning(
        nn.Flatten(),
        torch.zeros(1, 1, 1, 2),
        torch.zeros(1),
        1,
        1,
        {"name": "adam", "lr": 1e-4},
        1,
        perturbed_share=share,
    )
    mask = module._share_mask(n, "cpu")
    assert mask.shape == (n, 1, 1, 1) and int(mask.sum()) == expected  # int(n x share), at least one image
