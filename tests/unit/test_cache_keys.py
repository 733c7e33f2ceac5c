"""Cache keys, driven by their one declaration (`cache.ARTIFACTS`): for every artifact kind, changing
any dependency changes the key, and changing what must not matter (devices, progress bar, logger,
output paths, evaluation batch size) does not."""

import functools

import pytest
import torch

from backdoor_bench.cache import ARTIFACTS, artifact_spec, spec_key
from backdoor_bench.data import ImageSet
from backdoor_bench.runner import CONFIG_DEPENDENCIES, Runner
from tests.unit.contexts import tiny_config

# one override per config-derived dependency that changes it
VARY = {
    "source": "+dataset.source.split_seed=1",
    "model": "model.width=16",
    "training": "trainer.optimizer.lr=0.5",
    "augment": "dataset.augment.padding=3",
    "precision": "trainer.precision=bf16-mixed",
    "ssl": "ssl.temperature=0.3",
    "ssl_epochs": "trainer.max_stage_epochs=1",
    "defense": "defense=spectral",
    "caps": "trainer.max_stage_steps=5",
    "seed": "seed=1",
}
# overrides of VARY that also move another dependency: the precision is part of the training
# recipe, the stage cap that shortens SSL is one of the caps
ALSO = {"precision": {"training"}, "ssl_epochs": {"caps"}}
# what must never enter a key
IRRELEVANT = (
    "trainer.accelerator=auto",
    "trainer.devices=2",
    "trainer.progress_bar=true",
    "trainer.log_every_n_steps=3",
    "trainer.eval_batch_size=7",
    "trainer.test_subset=64",
    "logger=csv",
    "paths.output_dir=/elsewhere",
)


def _data(v: int) -> ImageSet:
    return ImageSet(torch.full((2, 1, 2, 2), v, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])


# two values of every dependency the caller gives
GIVEN = {
    "data": (_data(0), _data(1)),
    "role": ("backdoored", "clean"),
    "epochs": (2, 3),
    "loss": ("ce", "sce"),
    "attack": ({"name": "badnets", "poison_rate": 0.1}, {"name": "badnets", "poison_rate": 0.2}),
    "surrogate": (None, {"epochs": 3}),
    "stage": ("dbd_mixmatch", "dbr"),
    "artifact": ("sd_scores", "dst_encoder"),
    "spec": ({"k": 1}, {"k": 2}),
    "content": ("files-a", "files-b"),
    "batch_attack": ({"name": "wanet", "mode": "train"}, {"name": "blind"}),
}


@functools.cache
def _runner(overrides: tuple[str, ...]) -> Runner:
    return Runner(tiny_config(*overrides, root="/tmp/bb-keys"))


def _key(kind: str, overrides=(), swap: str | None = None) -> str:
    runner = _runner(tuple(overrides))
    given = {d: GIVEN[d][int(d == swap)] for d in ARTIFACTS[kind] if d not in CONFIG_DEPENDENCIES}
    return spec_key(runner.spec(kind, **given))


def test_every_dependency_is_either_from_the_config_or_given_and_has_a_variation():
    for kind, deps in ARTIFACTS.items():
        for d in deps:
            assert (d in VARY) if d in CONFIG_DEPENDENCIES else (d in GIVEN), f"{kind}: no variation for {d!r}"


@pytest.mark.parametrize("kind", sorted(ARTIFACTS))
def test_each_dependency_changes_the_key_and_nothing_else_does(kind):
    base = _key(kind)
    for d in ARTIFACTS[kind]:
        changed = _key(kind, [VARY[d]]) if d in CONFIG_DEPENDENCIES else _key(kind, swap=d)
        assert changed != base, f"{kind}: changing {d!r} left the key unchanged"
    for other in set(VARY) - set(ARTIFACTS[kind]):
        if ALSO.get(other, set()) & set(ARTIFACTS[kind]):
            continue  # the override also changes a declared dependency
        assert _key(kind, [VARY[other]]) == base, f"{kind}: {other!r} changed the key"
    for override in IRRELEVANT:
        assert _key(kind, [override]) == base, f"{kind}: {override} changed the key"


def test_the_package_version_is_in_every_key(monkeypatch):
    import backdoor_bench

    spec = artifact_spec("dataset", {"source": {}, "content": None})
    monkeypatch.setattr(backdoor_bench, "__version__", "9.9.9")
    assert spec_key(artifact_spec("dataset", {"source": {}, "content": None})) != spec_key(spec)


def test_a_spec_must_name_exactly_the_declared_dependencies():
    with pytest.raises(KeyError, match="missing"):
        artifact_spec("dataset", {"source": {}})
    with pytest.raises(KeyError, match="undeclared"):
        artifact_spec("dataset", {"source": {}, "content": None, "device": "cuda"})
    with pytest.raises(KeyError, match="does not depend on"):
        Runner(tiny_config(root="/tmp/bb-keys")).spec("dataset", content=None, device="cuda")
