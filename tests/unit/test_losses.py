"""Exact values of the classification and SimCLR losses on small tensors (DBD, Huang et al., ICLR
2022, App. I Eqs. 5-6 and Table 26)."""

import math

import pytest
import torch

from backdoor_bench.errors import ConfigError
from backdoor_bench.training.losses import apl, gce, get_loss, nt_xent, sce

EVEN = torch.tensor([[0.0, 0.0]])  # softmax [0.5, 0.5]
Y0 = torch.tensor([0])


def test_sce_exact():
    # 0.1 * ln 2 + (-ln 1e-4) * (1 - 0.5)
    assert sce(EVEN, Y0).item() == pytest.approx(4.6744849, abs=1e-5)
    assert sce(EVEN, Y0, alpha=1.0, beta=0.0).item() == pytest.approx(math.log(2), abs=1e-6)


def test_sce_confident_correct_sample_has_small_loss():
    per = sce(torch.tensor([[10.0, 0.0], [0.0, 10.0]]), torch.tensor([0, 0]), reduction="none")
    assert per.shape == (2,) and per[0] < 0.01 < 9.0 < per[1]


def test_gce_exact():
    assert gce(EVEN, Y0).item() == pytest.approx((1 - 0.5**0.7) / 0.7, abs=1e-6)  # 0.5491826
    assert gce(EVEN, Y0, q=1.0).item() == pytest.approx(0.5, abs=1e-6)  # q = 1: MAE-like 1 - p_y


def test_apl_nce_plus_rce_exact():
    # NCE = ln 0.5 / (2 ln 0.5) = 0.5; RCE = 9.2103 * 0.5
    assert apl(EVEN, Y0).item() == pytest.approx(5.1051702, abs=1e-5)
    assert apl(EVEN, Y0, alpha=1.0, beta=0.0).item() == pytest.approx(0.5, abs=1e-6)


def test_get_loss_binds_params_and_rejects_unknown():
    assert get_loss("sce", alpha=1.0, beta=0.0)(EVEN, Y0).item() == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ConfigError, match="use one of"):
        get_loss("focal")


def test_nt_xent_exact():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # every anchor: positive sim 1, two negatives with sim 0 -> log(1 + 2/e)
    assert nt_xent(u, u.clone(), temperature=1.0).item() == pytest.approx(0.5514447, abs=1e-6)
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # asymmetric (DBD's code): anchors u only; symmetric: the v anchors join
    assert nt_xent(u, v, temperature=1.0).item() == pytest.approx(0.9803035, abs=1e-6)
    assert nt_xent(u, v, temperature=1.0, symmetric=True).item() == pytest.approx(1.1711492, abs=1e-6)


def test_nt_xent_normalises_and_uses_temperature():
    u = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    assert nt_xent(u, u.clone(), temperature=0.5).item() == pytest.approx(math.log(1 + 2 / math.e**2), abs=1e-6)
