"""The one-line result a run prints, the W&B summary's keys and the verdict table."""

import math

import torch

from backdoor_bench.attacks.base import PoisonedSet
from backdoor_bench.data.imageset import ImageSet
from backdoor_bench.defenses.base import Verdict
from backdoor_bench.results import flat_metrics, result_line, verdict_table

RESULTS = {
    "metrics": {"acc": 0.912345, "asr": 0.05, "ra": None},
    "detection": {"tpr": 0.9, "fpr": 1 / 3, "precision": 0.5, "kept_poison_rate": 0.012345, "tp": 9, "fp": 3},
    "input_detection": None,
    "config": {"dataset": {"name": "digits"}, "attack": {"name": "badnets"}, "defense": {"name": "spectral"}},
    "choices": {"dataset": "digits", "attack": "dst/badnets", "defense": "spectral"},
    "timing": {"total": 12.34},
}


def test_result_line_with_detection_figures():
    assert result_line(RESULTS, "out/results.json") == (
        'result digits dst/badnets spectral: {"acc": 0.9123, "asr": 0.05, "ra": null}  '
        'detection {"tpr": 0.9, "fpr": 0.3333, "precision": 0.5, "kept_poison_rate": 0.0123}  '
        "(12.3s, out/results.json)"
    )


def test_result_line_of_an_input_detector_and_of_an_older_results_json():
    r = {**RESULTS, "detection": None, "choices": None}
    r["input_detection"] = {"tpr": 0.75, "fpr": 0.01, "auroc": 0.98765, "asr_passed": 0.2, "n_clean": 100}
    assert result_line(r, "r.json", note="skipped") == (
        'result digits badnets spectral: {"acc": 0.9123, "asr": 0.05, "ra": null}  '
        'input detection {"tpr": 0.75, "fpr": 0.01, "auroc": 0.9877, "asr_passed": 0.2}  (skipped, r.json)'
    )


def test_flat_metrics_skip_missing_values():
    assert flat_metrics({**RESULTS, "input_detection": {"auroc": 0.5}}) == {
        "metrics/acc": 0.912345,
        "metrics/asr": 0.05,
        "detection/tpr": 0.9,
        "detection/fpr": 1 / 3,
        "detection/precision": 0.5,
        "detection/kept_poison_rate": 0.012345,
        "detection/tp": 9,
        "detection/fp": 3,
        "input_detection/auroc": 0.5,
    }


def poisoned_set(n=4):
    train = ImageSet(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 1, 0])[:n], ["a", "b"])
    return PoisonedSet(
        train,
        torch.tensor([False, True, False, False])[:n],
        torch.tensor([0, 0, 1, 0])[:n],
        torch.zeros(n, dtype=torch.bool),
    )


def test_verdict_table_rows():
    v = Verdict(
        kept=torch.tensor([True, False, True, True]),
        labels=torch.tensor([0, 0, 1, 0]),
        scores=torch.tensor([0.5, 2.0, math.nan, 0.25]),
    )
    t = verdict_table(v, poisoned_set())
    assert t["columns"] == ["index", "score", "kept", "label", "verdict_label", "poisoned", "cover", "true_label"]
    assert t["rows"] == [
        [0, 0.5, True, 0, 0, False, False, 0],
        [1, 2.0, False, 1, 0, True, False, 0],
        [2, None, True, 1, 1, False, False, 1],
        [3, 0.25, True, 0, 0, False, False, 0],
    ]
    assert [r[0] for r in verdict_table(v, poisoned_set(), limit=2)["rows"]] == [0, 2]  # every 2nd sample
    assert verdict_table(Verdict(kept=torch.ones(4, dtype=torch.bool)), poisoned_set()) is None  # no scores
