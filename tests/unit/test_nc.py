"""Neural Cleanse: the tanh parameterisation, the stamp and the loss, NC's cost schedule, the MAD
anomaly index, the unlearning set, and a run that finds a planted trigger."""

import math

import pytest
import torch
from torch import nn

from backdoor_bench.data import ImageSet
from backdoor_bench.defenses.nc import (
    EPSILON,
    CostSchedule,
    NeuralCleanse,
    from_raw,
    reverse_engineer,
    stamp,
    to_raw,
    trigger_loss,
    unlearning_set,
)
from backdoor_bench.defenses.outliers import mad_anomaly
from backdoor_bench.errors import ConfigError
from tests.unit.contexts import context


def test_the_tanh_parameterisation_maps_to_the_unit_interval_and_back():
    assert from_raw(torch.zeros(2)).tolist() == [0.5, 0.5]
    ends = from_raw(torch.tensor([1e3, -1e3], dtype=torch.float64)).tolist()
    assert ends == pytest.approx([0.5 + 1 / (2 - EPSILON), 0.5 - 1 / (2 - EPSILON)], abs=1e-12)  # just beyond [0, 1]
    v = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    assert torch.allclose(from_raw(to_raw(v)), v, atol=1e-9)
    assert to_raw(torch.tensor([0.5])).item() == 0.0


def test_stamp_mixes_image_and_pattern_by_the_mask():
    x = torch.full((1, 2, 1, 2), 0.2)
    mask = torch.tensor([[0.5, 0.0]])  # [H, W], shared by the channels
    pattern = torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]]])  # [C, H, W]
    assert torch.allclose(stamp(x, mask, pattern), torch.tensor([[[[0.6, 0.2]], [[0.1, 0.2]]]]))


def test_the_loss_is_ce_to_the_target_plus_cost_times_the_mask_l1():
    logits = torch.zeros(3, 4)
    mask = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    assert trigger_loss(logits, 2, mask, 0.1).item() == pytest.approx(math.log(4) + 0.2)
    logits = torch.tensor([[0.0, 0.0, math.log(3.0), 0.0]])  # p(target) = 3 / 6
    assert trigger_loss(logits, 2, mask, 0.0).item() == pytest.approx(math.log(2.0))


def test_the_cost_schedule_follows_nc():
    s = CostSchedule(init_cost=1e-3, multiplier=2.0, patience=2, early_stop_patience=3)
    assert s.cost == 0
    s.update(True, 10.0)
    assert s.cost == 0 and s.best == 10.0 and s.improved
    s.update(True, 12.0)  # 2 successes at cost 0: lambda = init_cost (and this step counts as the first up)
    assert s.cost == 1e-3 and not s.improved and s.best == 10.0
    s.update(True, 9.0)  # a second success in a row: up
    assert s.cost == pytest.approx(2e-3) and s.improved and s.best == 9.0
    s.update(False, 5.0)  # a failure never becomes the best mask
    assert s.best == 9.0 and s.cost == pytest.approx(2e-3)
    assert not s.update(False, 5.0)  # 2 failures: down by 2 ** 1.5
    assert s.cost == pytest.approx(2e-3 / 2**1.5)
    # up and down both happened; the best (9.0) has not improved by 1% for 3 steps: stop
    assert s.update(False, 5.0)


def test_early_stop_waits_for_both_directions():
    s = CostSchedule(init_cost=1.0, multiplier=2.0, patience=1, early_stop_patience=1)
    stops = [s.update(True, 1.0) for _ in range(5)]
    assert not any(stops) and s.cost == 2.0**5  # init_cost, then x 2 each step; only up: never stops


def test_mad_anomaly_index_and_small_side_flags():
    norms = torch.tensor([1.0, 10.0, 11.0, 9.0, 10.0, 12.0, 30.0])
    index, flagged, median, mad = mad_anomaly(norms)
    assert median == 10.0 and mad == pytest.approx(1.4826)  # |dev| = 9 0 1 1 0 2 20 -> median 1
    assert index.tolist() == pytest.approx([9 / 1.4826, 0.0, 1 / 1.4826, 1 / 1.4826, 0.0, 2 / 1.4826, 20 / 1.4826])
    assert flagged == [0]  # class 6 is an outlier too, on the large-norm side: never flagged
    index, flagged, median, mad = mad_anomaly(torch.tensor([1.0, 9.0, 10.0, 10.0, 11.0, 12.0]))
    assert median == 10.0 and mad == pytest.approx(1.4826) and flagged == [0]  # even count: mean of the middle two
    index, flagged, _, mad = mad_anomaly(torch.tensor([3.0, 3.0, 3.0, 1.0]))
    assert mad == 0 and index.tolist() == [0.0, 0.0, 0.0, math.inf] and flagged == [3]
    _, flagged, _, _ = mad_anomaly(norms, side="high")  # the other side (ssl_knn's gate): class 6 only
    assert flagged == [6]
    with pytest.raises(ValueError, match="side"):
        mad_anomaly(norms, side="both")


def test_unlearning_set_stamps_its_share_with_the_triggers_in_turn():
    x = torch.full((10, 1, 2, 2), 100, dtype=torch.uint8)
    full = torch.ones(2, 2)
    triggers = [(full, torch.ones(1, 2, 2)), (full, torch.zeros(1, 2, 2))]
    out, chosen = unlearning_set(x, triggers, 0.4, seed=0)
    assert len(chosen) == 4 and chosen.tolist() == sorted(chosen.tolist())
    assert sorted(out[chosen, 0, 0, 0].tolist()) == [0, 0, 255, 255]
    rest = torch.ones(10, dtype=torch.bool)
    rest[chosen] = False
    assert (out[rest] == 100).all() and out.dtype == torch.uint8


class CornerNet(nn.Module):
    """Class 1 when the top-left pixel is bright, class 0 otherwise: a 1-pixel backdoor to class 1."""

    def forward(self, x):
        z = 40 * (x[:, 0, 0, 0] - 0.5)
        return torch.stack([-z, z], 1)


def test_reverse_engineering_finds_a_one_pixel_trigger():
    x = torch.zeros(32, 1, 4, 4, dtype=torch.uint8)
    s = CostSchedule(init_cost=1e-2, patience=2, early_stop_patience=5)
    r = reverse_engineer(CornerNet(), x, 1, s, steps=300, batches_per_step=2, batch_size=16, seed=0)
    assert r["success"] == 1.0 and r["steps"] < 300  # stopped early
    assert r["mask"][0, 0] > 0.4 and r["pattern"][0, 0, 0] > 0.9 and r["norm"] < 2.0
    assert r["mask"].shape == (4, 4) and r["pattern"].shape == (1, 4, 4)


def test_nc_runs_unlearning_only_when_a_class_is_flagged():
    g = torch.Generator().manual_seed(0)
    train = ImageSet(
        torch.randint(0, 255, (40, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(40) % 4, list("0123")
    )
    ctx = context(train, clean=train.subset(torch.arange(12)))
    out = NeuralCleanse(steps=3, samples_per_step=8, batch_size=4, unlearn_epochs=1).run(ctx)
    e = out.extra
    assert len(e["anomaly_index"]) == len(e["mask_norms"]) == 4 and e["steps"] == [2, 2, 2, 2]  # tiny caps
    assert e["mitigated"] == bool(e["flagged"])
    out = NeuralCleanse(steps=3, samples_per_step=8, batch_size=4, anomaly_threshold=1e9).run(ctx)
    assert out.extra["flagged"] == [] and not out.extra["mitigated"]
    ref = ctx.backdoored_model()
    assert all(torch.equal(a, b) for a, b in zip(out.model.state_dict().values(), ref.state_dict().values()))


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"steps": 0}, "defense.steps"),
        ({"betas": [0.5]}, "defense.betas"),
        ({"cost_multiplier": 1.0}, "defense.cost_multiplier"),
        ({"unlearn_share": 0}, "defense.unlearn_share"),
        ({"unlearn_epochs": 0}, "defense.unlearn_epochs"),
        ({"attack_succ_threshold": 2}, "defense.attack_succ_threshold"),
    ],
)
def test_bad_values_fail_naming_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        NeuralCleanse(**kw)
