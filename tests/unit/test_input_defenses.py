"""ABL's isolation split, ShrinkPad's geometry, STRIP's superimposition, entropy and threshold, and
the input-detection metrics: exact values on small tensors."""

import math

import pytest
import torch

from backdoor_bench.data import ImageSet
from backdoor_bench.defenses.abl import ABL, isolate
from backdoor_bench.defenses.shrinkpad import ShrinkPad, ShrinkPadTransform
from backdoor_bench.defenses.strip import Strip, StripDetector, mean_entropy, superimpose
from backdoor_bench.errors import ConfigError
from backdoor_bench.metrics import input_detection_metrics


def test_abl_isolates_the_highest_scores_ties_by_index():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, -1.0, 0.2, 0.3, 0.0, 0.4, 0.6])
    assert isolate(scores, 0.2).nonzero().flatten().tolist() == [1, 3]
    assert isolate(scores, 0.3).nonzero().flatten().tolist() == [1, 3, 9]
    with pytest.raises(ConfigError, match="defense.isolation_ratio"):
        ABL(isolation_ratio=0)


def test_shrinkpad_shrinks_and_pads_at_a_random_offset():
    x = torch.full((3, 1, 10, 10), 200, dtype=torch.uint8)
    out = ShrinkPadTransform(0.2, seed=0)(x)  # 10 -> 8 pixels, offsets in [0, 2]
    assert out.shape == x.shape and out.dtype == torch.uint8
    for img in out[:, 0]:
        rows, cols = (img > 0).any(1).nonzero().flatten(), (img > 0).any(0).nonzero().flatten()
        assert len(rows) == len(cols) == 8 and 0 <= int(rows[0]) <= 2 and 0 <= int(cols[0]) <= 2
        assert int((img == 200).sum()) == 64 and int((img == 0).sum()) == 36
    again = ShrinkPadTransform(0.2, seed=0)(x)
    assert torch.equal(out, again)  # seeded
    with pytest.raises(ConfigError, match="defense.shrink_rate"):
        ShrinkPad(shrink_rate=0.5)


def test_strip_superimposes_by_clipped_sum_and_averages_entropy_in_bits():
    x = torch.tensor([[[[100, 200]]]], dtype=torch.uint8)  # [1, 1, 1, 2]
    overlays = torch.tensor([[[[[100, 100]]], [[[0, 60]]]]], dtype=torch.uint8)  # [1, 2, 1, 1, 2]
    assert superimpose(x, overlays).tolist() == [[[[[200, 255]]], [[[100, 255]]]]]
    probs = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]])  # entropies 1 bit and 0 bits
    assert mean_entropy(probs).tolist() == [0.5]


def test_strip_threshold_and_scores_on_a_model_that_ignores_the_overlay_for_triggered_inputs():
    class Toy(torch.nn.Module):
        """Confident (class 0) when pixel 0 is 1.0 (the 'trigger' survives any overlay), else uniform."""

        def forward(self, x):
            hot = (x[:, 0, 0, 0] == 1.0).float()[:, None]
            return hot * torch.tensor([50.0, 0.0]) + (1 - hot) * torch.zeros(2)

    clean = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
    det = StripDetector(Toy(), clean, n_overlays=4, device="cpu", seed=0)
    s_clean = det.scores(clean, exclude_self=True)
    assert torch.allclose(s_clean, torch.full((10,), -1.0))  # uniform over 2 classes: 1 bit
    triggered = clean.clone()
    triggered[:, 0, 0, 0] = 255
    assert (det.scores(triggered) > -1e-6).all()  # confident: entropy ~0
    with pytest.raises(ConfigError, match="defense.frr"):
        Strip(frr=0)


def test_input_detection_metrics_exact():
    sc = torch.tensor([0.0, 1.0, 2.0, 3.0])
    st = torch.tensor([2.0, 4.0, 5.0])
    hit = torch.tensor([True, True, False])
    m = input_detection_metrics(sc, st, threshold=2.5, hit=hit)
    assert m["tpr"] == 2 / 3 and m["fpr"] == 1 / 4 and m["n_passed"] == 1 and m["asr_passed"] == 1.0
    # pairs: 12; triggered above clean: 2.0 beats 2 and ties 1; 4.0 and 5.0 beat all 4 -> (2 + 0.5 + 8) / 12
    assert math.isclose(m["auroc"], 10.5 / 12)
    assert input_detection_metrics(sc, st, threshold=-1, hit=hit)["asr_passed"] is None


def test_strip_runs_on_a_tiny_context():
    from tests.unit.contexts import context

    g = torch.Generator().manual_seed(0)
    train = ImageSet(
        torch.randint(0, 255, (64, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(64) % 4, list("abcd")
    )
    ctx = context(train, "model=small_cnn", clean=train.subset(torch.arange(16)))
    out = Strip(n_overlays=3, clean_fraction=0.25).run(ctx)
    assert out.input_detector.threshold is not None and out.extra["n_overlay_pool"] == 16
    assert out.input_detector.flag(train.x[:5]).dtype == torch.bool
