"""The proof table (`experiment=proof/digits`, `proof/digits_dirty_label` and their seeds, make test-slow): every
seed defense on real digits, per method the shape it reached when measured (README, "Proof on
digits"), with a margin.

The sweeps take a while on 2 cores; set PROOF_SWEEP_DIR to check sweeps you already ran:
    python run.py -m experiment=proof/digits hydra.sweep.dir=outputs/multirun/proof
    python run.py -m experiment=proof/digits_dirty_label hydra.sweep.dir=outputs/multirun/proof_dirty
    python run.py -m experiment=proof/digits_seeds hydra.sweep.dir=outputs/multirun/proof_seeds
    python run.py -m experiment=proof/digits_dirty_label_seeds hydra.sweep.dir=outputs/multirun/proof_dirty_seeds
    PROOF_SWEEP_DIR=outputs/multirun/proof:outputs/multirun/proof_dirty:outputs/multirun/proof_seeds:outputs/multirun/proof_dirty_seeds \
        pytest -m slow tests/e2e/test_proof.py
A sweep run in parts (one attack at a time, say) is checked by listing its directories separated
by the path separator (`:` on Linux); where two hold the same (attack, defense, seed), the later
wins. Where the sweeps hold several seeds of a method (`experiment=proof/digits_seeds` adds seeds 1-2 of
DBD, ssl_knn and flow_relabel against BadNets and Blended, `proof/digits_dirty_label_seeds` seeds
1-3 of Spectral, AC and ISPL on the dirty-label scenario), each metric is the median over them, and no
defense's ACC that the method is compared with is the median over the same seeds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from backdoor_bench.report.table import load_runs
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# (attack, defense name: `dbd/cpu` is `dbd`) -> bounds: ACC at least `acc_drop` points below no defense's on the same
# attack; ASR at most `asr`; flagged-set precision at least `precision`; each the median over the
# seeds the sweeps hold. Measured values are in the README; the bars leave a margin for seeds and
# thread scheduling. "cl" is the 2026-12-02 sweep with channels-last (seed 0; seeds 1-2 where
# proof/digits_seeds runs them).
BARS: dict[tuple[str, str], dict] = {
    # measured 2026-11-30 (README): ACC 95.8 (none 98.6), ASR 0.0; the labeled half 0.14% poisoned;
    # rerun 2026-12-02: 96.4 (none 98.3) / 0.0. cl seeds 0 / 1 / 2: 87.5 / 0.3 (its loss split left
    # class 3 wholly unlabeled), 96.9 / 0.3, 95.5 / 0.0 (none 98.3, 98.9, 98.9): median drop 3.4
    ("badnets", "dbd"): {"acc_drop": 4, "asr": 5},
    # clean digits (none 99.2): ACC 97.5, then 96.1 in the 2026-12-02 rerun and 96.1 in cl (MixMatch on
    # CPU threads is not bit-reproducible): a 3.1-point cost, just past the 3-point goal, so
    # DBD misses this bar (README: the hard half of every class loses its labels)
    ("none", "dbd"): {"acc_drop": 3},
    # clean digits: ACC 99.4 (none 99.2)
    ("none", "ispl"): {"acc_drop": 2},
    # D-ST and D-BR with the digits SD preset (dst/digits, dbr/digits; none 98.6): BadNets D-ST 92.8 / 0.0,
    # the poisoned split 100% poisoned; Blended D-ST 96.7 / 0.0, 85.9%. D-BR with its per-class clean
    # split (2026-12-01): BadNets 98.6 / 3.7, split 98.6%; Blended 97.8 / 1.9, 87.3%. Rerun 2026-12-02:
    # D-ST BadNets 93.6 / 0.0, Blended 96.4 / 0.0; cl: 94.2 / 0.0 for both (none 98.3 / 98.6: Blended's
    # drop 4.4, which misses the Blended bar), D-BR 98.6 / 6.5 and 97.8 / 0.6
    ("badnets", "dst"): {"acc_drop": 8, "asr": 5, "precision": 90},
    ("badnets", "dbr"): {"acc_drop": 2, "asr": 10, "precision": 90},
    ("blended", "dst"): {"acc_drop": 4, "asr": 5, "precision": 75},
    ("blended", "dbr"): {"acc_drop": 3, "asr": 5, "precision": 75},
    # clean digits: ACC 99.2 (none 99.2); the class gate opens no class (min_outflow 0.3)
    ("none", "ssl_knn"): {"acc_drop": 2},
    # ACC 98.9, ASR 0.3, precision 97.8%. cl: its class gate stays shut on seed 0 (the target's
    # modified z-score 3.35 < 3.5; nothing flagged, 98.3 / 100) and opens on seeds 1 / 2 (98.9 / 0.0,
    # 99.2 / 0.3, precision 98.6%, 98.5%). With the dominant-class gate (2026-12-02 rerun) seeds
    # 0 / 1 / 2: 99.2 / 0.3, 99.2 / 0.0, 99.2 / 0.6 (none 98.3, 98.9, 98.9)
    ("badnets", "ssl_knn"): {"acc_drop": 2, "asr": 5, "precision": 90},
    # ACC 98.9, ASR 0.3, precision 60.3% (the paper's split drops the middle 70% of a flagged class)
    ("badnets", "flow_relabel"): {"acc_drop": 2, "asr": 5, "precision": 50},
    # Blended (none 98.6): DBD 96.1 / 0.0; flow_relabel 98.1 / 0.0, precision 61.5%
    ("blended", "dbd"): {"acc_drop": 4, "asr": 5},
    ("blended", "flow_relabel"): {"acc_drop": 2, "asr": 5, "precision": 50},
    # Blended ssl_knn under the min_outflow floor: 98.9 / 0.3, precision 94.4%, only class 0 opened.
    # cl seeds 0 / 1 / 2: 98.6 / 100 (gate shut, z 2.71), 98.9 / 0.3, 99.2 / 0.6. Dominant-class gate:
    # 98.9 / 0.3, 98.9 / 0.0, 99.4 / 0.6 (the target's outflow 2.1-3.1 x the runner-up's)
    ("blended", "ssl_knn"): {"acc_drop": 2, "asr": 5, "precision": 90},
    # clean digits (none 99.2): flow_relabel 99.2, ITLM 98.6, Spectral 98.1 (each within the 2 points)
    ("none", "flow_relabel"): {"acc_drop": 2},
    ("none", "itlm"): {"acc_drop": 2},
    ("none", "spectral"): {"acc_drop": 2},
    # the ISPL paper's one-to-one scenario (none 99.2, TMR 100; experiment=proof/digits_dirty_label,
    # 2026-12-02): ISPL 98.9 / TMR 0.0, precision 87.5%. AC's verdict depends on the ICA's random start
    # (97.5 / TMR 0.0 on an earlier model; 98.3 / TMR 100 on the current one, which misses this bar;
    # seeds 1 / 2 / 3: 96.7 / 0.0, 96.1 / 0.0, 96.1 / 100, so it reaches this bar on 2 of 4 seeds).
    # cl seeds 0-3 (proof/digits_dirty_label_seeds): TMR 7.9, 0.0, 0.0, 100 (12, 14, 14, 0 of the 14
    # removed); median 3.9, ACC median 96.7 (none 99.1). 2026-12-02 rerun: TMR 42.1, 0.0, 0.0, 100,
    # median 21.1: this bar fails on it
    ("dirty_label", "ac"): {"acc_drop": 3, "asr": 5},
    # Spectral on the last feature map, flattened (2026-12-02): 98.3 / TMR 0.0, all 14 removed
    ("dirty_label", "spectral"): {"acc_drop": 3, "asr": 5},
    # ISPL: 2026-12-02 rerun, seeds 0 / 1 / 2: TMR 100, 94.7, 100 (self-training re-admits what the
    # vote set aside), so this bar now fails: the timed sweep's TMR 0.0 was one draw
    ("dirty_label", "ispl"): {"acc_drop": 2, "asr": 5, "precision": 50},
}


# seed 0 of everything, then more seeds of the methods whose verdict varies with the seed
PROOF_EXPERIMENTS = ("proof/digits", "proof/digits_dirty_label", "proof/digits_seeds", "proof/digits_dirty_label_seeds")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    given = [Path(p) for p in os.environ.get("PROOF_SWEEP_DIR", "").split(os.pathsep) if p]
    if not given:
        root = tmp_path_factory.mktemp("proof")
        for experiment in PROOF_EXPERIMENTS:
            sweep = root / experiment.replace("/", "-")
            subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "run.py"),
                    "-m",
                    f"experiment={experiment}",
                    "logger=none",
                    f"hydra.sweep.dir={sweep}",
                    f"paths.cache_dir={root / 'cache'}",
                ],
                cwd=ROOT,
                check=True,
                timeout=4 * 3600,
                env={**os.environ, "WANDB_SILENT": "true"},
            )
            given.append(sweep)
    df, errors = load_runs(given)
    if os.environ.get("PROOF_SWEEP_DIR"):  # a sweep checked in parts may hold stopped reruns: say so
        for e in errors.to_dict("records"):
            warnings.warn(f"unfinished point {e['run']}: {e['error']}", stacklevel=1)
    else:
        assert errors.empty, errors.to_dict("records")
    roots = [d.resolve() for d in given]
    df["order"] = [next(i for i, d in enumerate(roots) if Path(r).resolve().is_relative_to(d)) for r in df["run"]]
    # keyed by the defense's name, not its option: `dbd/cpu` is DBD; one row per seed
    df = df.sort_values("order", kind="stable").drop_duplicates(["attack", "defense_name", "seed"], keep="last")
    return df.set_index(["attack", "defense_name"]).sort_index()


def median_over_seeds(runs, attack: str, defense: str):
    """The method's metrics, the median over its seeds, and no defense's on those same seeds."""
    rows = runs.loc[[(attack, defense)]]
    none = runs.loc[[(attack, "none")]]
    none = none[none["seed"].isin(rows["seed"])]
    return rows.median(numeric_only=True), none.median(numeric_only=True)


@pytest.mark.parametrize("key", sorted(BARS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_defense_reaches_its_measured_shape(runs, key):
    bar = BARS[key]
    attack, defense = key
    row, base = median_over_seeds(runs, attack, defense)
    if "acc_drop" in bar:
        assert row["acc"] >= base["acc"] - bar["acc_drop"] / 100, (key, row["acc"], base["acc"])
    if "asr" in bar:
        metric = "tmr" if attack == "dirty_label" else "asr"
        assert row[metric] <= bar["asr"] / 100, (key, row[metric])
    if "precision" in bar:
        assert row["precision"] >= bar["precision"] / 100, (key, row["precision"])
