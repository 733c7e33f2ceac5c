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
