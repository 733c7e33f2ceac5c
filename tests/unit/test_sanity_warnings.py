"""A finished run whose result is suspect says so: a WARNING and `warnings` in results.json."""

import torch

from backdoor_bench.defenses.base import Outcome, Verdict
from backdoor_bench.pipeline import sanity_warnings


def test_a_verdict_keeping_nothing_and_a_one_class_model_are_flagged(caplog):
    model = torch.nn.Identity()
    empty = Outcome(model=model, verdict=Verdict(kept=torch.zeros(10, dtype=torch.bool)))
    w = sanity_warnings(empty, torch.full((20,), 3))
    assert len(w) == 2 and "keeps 0 of 10" in w[0] and "predicts class 3 for all 20 test images" in w[1]
    assert "keeps 0 of 10" in caplog.text
    fine = Outcome(model=model, verdict=Verdict(kept=torch.ones(10, dtype=torch.bool)))
    assert sanity_warnings(fine, torch.arange(20) % 10) == []
    assert sanity_warnings(Outcome(model=model), torch.arange(20) % 10) == []
