"""The proof test's aggregation (tests/e2e/test_proof.py, make test-slow), checked here on a small
table so that `make test` covers it."""

import pandas as pd
import pytest

from tests.e2e.test_proof import median_over_seeds


def test_median_over_seeds_compares_a_method_with_no_defense_on_its_own_seeds():
    runs = pd.DataFrame(
        {
            "attack": ["a"] * 5,
            "defense_name": ["none", "none", "none", "m", "m"],
            "seed": [0, 1, 2, 1, 2],
            "acc": [0.90, 0.80, 0.70, 0.60, 0.50],
            "asr": [1.0, 1.0, 1.0, 0.0, 0.2],
        }
    ).set_index(["attack", "defense_name"])
    row, base = median_over_seeds(runs, "a", "m")
    assert row["acc"] == pytest.approx(0.55) and row["asr"] == pytest.approx(0.1)
    assert base["acc"] == pytest.approx(0.75)  # seeds 1 and 2 only
