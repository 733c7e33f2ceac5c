"""MixMatch pieces (DBD, Huang et al., ICLR 2022, App. I Eqs. 7-9, and its official code's
utils/trainer/semi.py): exact values and the loader."""

import pytest
import torch

from backdoor_bench.data.augment import CropFlip
from backdoor_bench.training.mixmatch import (
    SemiLoader,
    linear_rampup,
    mixmatch_loss,
    mixup,
    sharpen,
)


def test_sharpen_exact():
    q = sharpen(torch.tensor([[0.6, 0.4], [0.5, 0.5]]), T=0.5)
    assert torch.allclose(q, torch.tensor([[0.36 / 0.52, 0.16 / 0.52], [0.5, 0.5]]))


def test_mixup_keeps_the_larger_weight_on_its_own_input():
    x = torch.tensor([[0.0], [1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    perm = torch.tensor([1, 0])
    for lam in (0.3, 0.7):  # lambda' = max(lambda, 1 - lambda) = 0.7 either way
        mx, mt = mixup(x, t, lam, perm)
        assert torch.allclose(mx, torch.tensor([[0.3], [0.7]]))
        assert torch.allclose(mt, torch.tensor([[0.7, 0.3], [0.3, 0.7]]))


def test_mixmatch_loss_exact():
    lx, lu = mixmatch_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
    assert lx.item() == pytest.approx(0.6931472, abs=1e-6)  # soft CE = ln 2
    assert lu.item() == pytest.approx(0.25, abs=1e-7)  # ((0.5-1)^2 + (0.5-0)^2) / 2 classes


def test_linear_rampup():
    assert linear_rampup(10, 190) == pytest.approx(10 / 190)  # DBD's first semi epoch: lambda_u ~ 0.79
    assert linear_rampup(-1, 190) == 0.0 and linear_rampup(250, 190) == 1.0 and linear_rampup(3, 0) == 1.0


def test_semi_loader_draws_from_the_current_split():
    x = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 4, 4).contiguous()
    y = torch.arange(20) % 2
    calls = []

    def split():
        calls.append(1)
        return torch.arange(20) < (6 if len(calls) == 1 else 14)

    loader = SemiLoader(x, y, split, batch_size=4, iterations=5, k=2, augment=CropFlip(padding=0, flip=True))
    assert len(loader) == 5
    batches = list(loader)
    assert len(calls) == 1 and len(batches) == 5
    for b in batches:
        assert b["x"].shape == (4, 1, 4, 4) and b["u"].shape == (2, 4, 1, 4, 4)
        assert (b["index"] < 6).all()
        assert (b["u"][:, :, 0, 0, 0] * 255 >= 6).all()  # unlabeled images only
        assert torch.equal(b["y"], y[b["index"]])
    list(loader)
    assert len(calls) == 2  # the split is asked again at every epoch
