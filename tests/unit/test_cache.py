import torch

from backdoor_bench.cache import ArtifactCache, spec_key


def test_spec_key_is_stable_and_order_free():
    assert spec_key({"a": 1, "b": [1, 2]}) == spec_key({"b": [1, 2], "a": 1})
    assert spec_key({"a": 1}) != spec_key({"a": 2})


def test_build_once_then_reuse(tmp_path):
    cache, calls = ArtifactCache(tmp_path), []

    def build():
        calls.append(1)
        return {"w": torch.arange(4)}

    a = cache.get_or_build("model", {"k": 1}, build)
    b = cache.get_or_build("model", {"k": 1}, build)
    assert len(calls) == 1 and torch.equal(a["w"], b["w"])
    assert [e["reused"] for e in cache.events] == [False, True]
    entry = cache.entry("model", {"k": 1})
    assert sorted(p.name for p in entry.iterdir()) == [".lock", "meta.json", "payload.pt"]


def test_corrupt_entry_is_rebuilt(tmp_path):
    cache, calls = ArtifactCache(tmp_path), []

    def build():
        calls.append(1)
        return {"w": torch.ones(3)}

    cache.get_or_build("x", {"k": 1}, build)
    payload = cache.entry("x", {"k": 1}) / "payload.pt"
    payload.write_bytes(payload.read_bytes()[:-10] + b"0123456789")
    out = cache.get_or_build("x", {"k": 1}, build)
    assert len(calls) == 2 and torch.equal(out["w"], torch.ones(3))


def test_incomplete_entry_without_meta_is_rebuilt(tmp_path):
    cache = ArtifactCache(tmp_path)
    entry = cache.entry("x", {"k": 2})
    entry.mkdir(parents=True)
    (entry / "payload.pt").write_bytes(b"partial")
    assert cache.load("x", {"k": 2}) is None
    assert cache.get_or_build("x", {"k": 2}, lambda: {"v": torch.zeros(1)})["v"].item() == 0


def test_disabled_cache_always_builds(tmp_path):
    cache, calls = ArtifactCache(tmp_path, enabled=False), []
    for _ in range(2):
        cache.get_or_build("x", {"k": 1}, lambda: calls.append(1) or {"v": torch.zeros(1)})
    assert len(calls) == 2 and not any(tmp_path.iterdir())


def test_a_corrupt_stage_checkpoint_is_deleted_and_rebuilt(tmp_path, caplog):
    """Every stage checkpoint goes through `load_checkpoint`: a truncated, empty or foreign file
    is a warning and a fresh start, never an EOFError on every rerun."""
    from backdoor_bench.runner import StageState

    path = tmp_path / "partial.ckpt"
    state = StageState(path)
    state.save([{"core": torch.arange(3), "pred": torch.zeros(5)}])
    assert torch.equal(state.load(default=[])[0]["core"], torch.arange(3))
    for content in (b"", path.read_bytes()[:40], b"not a checkpoint"):
        path.write_bytes(content)
        assert state.load(default=[]) == [] and not path.exists()
    assert "stage checkpoint" in caplog.text and "deleting it" in caplog.text
    # a loadable file of the wrong shape, rejected by the stage's own check
    state.save({"something": "else"})
    from backdoor_bench.defenses.ispl import _check_components

    assert state.load(default=[], check=_check_components) == [] and not path.exists()


def test_a_corrupt_training_checkpoint_restarts_the_fit(tmp_path):
    from backdoor_bench.models import ImageClassifier
    from backdoor_bench.models.small_cnn import SmallCNN
    from backdoor_bench.training.fit import fit
    from backdoor_bench.training.supervised import Supervised
    from tests.unit.test_training import tcfg

    x, y = torch.zeros(8, 1, 8, 8, dtype=torch.uint8), torch.arange(8) % 2
    t = tcfg()
    ckpt = tmp_path / "partial.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    model = ImageClassifier(SmallCNN(2, 1, 4), (0.5,), (0.5,))
    opt = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": "constant"}
    fit(Supervised(model, opt, 1), x, y, t, max_epochs=1, checkpoint=ckpt)
    assert ckpt.exists()  # rewritten by the fresh fit, which is loadable again
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_written_files_honour_the_umask(tmp_path):
    """Atomic writes get 0666 less the umask, as any new file: readable by the group and others
    under umask 022 (a shared cluster filesystem), private under 077; no temporary file is left."""
    import os
    import stat

    from backdoor_bench.cache import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a" / "results.json", {"x": 1})
        entry = ArtifactCache(tmp_path / "cache").store("model", {"k": 1}, {"w": torch.zeros(2)})
        os.umask(0o077)
        atomic_write_json(tmp_path / "b" / "results.json", {"x": 1})
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a" / "results.json") == 0o644
    assert mode(entry / "payload.pt") == 0o644 and mode(entry / "meta.json") == 0o644
    assert mode(tmp_path / "b" / "results.json") == 0o600
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["results.json"]
