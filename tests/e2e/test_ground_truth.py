"""The ground truth stays out of a defense's reach: a deliberately cheating defense that searches
everything its context exposes finds neither the poison mask, nor the true labels, nor the
attack's config, nor any path into the cache or the run's Hydra folder."""

import torch

from backdoor_bench import pipeline
from backdoor_bench.validate import validate
from tests.unit.contexts import tiny_config


def test_a_cheating_defense_finds_no_ground_truth(tmp_path):
    from tests.e2e.cheater import Cheater

    cfg = tiny_config(
        "defense._target_=tests.e2e.cheater.Cheater",
        "defense.name=cheater",
        "defense.clean_fraction=0.05",
        "attack=blended",
        "attack.pattern_seed=918273",
        root=str(tmp_path),
    )
    out = tmp_path / "run"
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "config.yaml").write_text("attack:\n  name: blended\n  pattern_seed: 918273\n")
    results = pipeline.run(cfg, out)
    assert results["data"]["n_poisoned"] > 0

    # the truth, computed here as the evaluator does
    attack, _ = validate(cfg)
    from backdoor_bench.runner import Runner

    train, _ = Runner(cfg).load_data()
    truth = attack.poison(train, cfg.seed)
    found = Cheater.found
    assert found["tensors"] and found["paths"], "the cheater searched nothing: the test would prove nothing"

    for t in found["tensors"]:
        if t.shape == truth.poisoned.shape:
            assert not torch.equal(t.bool(), truth.poisoned), "the poison mask is reachable"
            assert not torch.equal(t.long(), truth.y_true), "the true labels are reachable"
    for text in found["texts"]:
        assert "918273" not in text, "the attack's config is reachable"
    cache = (tmp_path / "cache").resolve()
    for p in found["paths"]:
        p = p.resolve()
        assert cache not in (p, *p.parents), f"a path into the cache is reachable: {p}"
        assert ".hydra" not in p.parts, f"the run's Hydra folder is reachable: {p}"
