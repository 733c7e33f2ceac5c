"""The cluster path: hydra-submitit-launcher's local executor runs the same code path as
`hydra/launcher=submitit_slurm` (each sweep point a separate submitit job) on one machine."""

import json
from collections import Counter

import pytest

from tests.conftest import run_py


@pytest.mark.slow
def test_submitit_local_sweep_builds_each_shared_artifact_once(tmp_path):
    """Two points that need the same poisoned set and backdoored model (no defense, and CLP on
    that model), run as concurrent submitit jobs over one cache: one job builds each artifact
    (under the cache's lock), the other reuses it."""
    p = run_py(
        tmp_path / "sweep",
        tmp_path / "cache",
        "trainer=tiny",
        "defense=none,clp",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=20",
        multirun=True,
        timeout=1200,
    )
    assert "2 of 2 points finished" in p.stdout
    runs = [json.loads(f.read_text()) for f in sorted(p.out_dir.rglob("results.json"))]
    assert sorted(r["config"]["defense"]["name"] for r in runs) == ["clp", "none"]
    entries = [(c["kind"], c["key"], c["reused"]) for r in runs for c in r["cache"]]
    built = Counter((kind, key) for kind, key, reused in entries if not reused)
    used = Counter((kind, key) for kind, key, _ in entries)
    assert built and all(n == 1 for n in built.values()), entries  # never built twice
    shared = {k for k, n in used.items() if n == 2}
    assert {"poisoned_set", "model"} <= {kind for kind, _ in shared}, entries
    assert all(built[k] == 1 for k in shared)  # each shared artifact built by exactly one job
