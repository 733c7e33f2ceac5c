"""The artifact cache: expensive products keyed by a hash of exactly the config that determines them.

Layout: `<root>/<kind>/<key>/payload.pt` + `meta.json` (the spec, the payload's sha256). Writes
are atomic (temporary file, then rename), `meta.json` is written last so an entry without it is
incomplete, a load verifies the checksum, and a bad entry is rebuilt, never trusted. A lock file
per entry lets parallel sweep jobs build an artifact once and reuse it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)


# What each artifact kind depends on: the one place a cache key is declared. `Runner.spec`
# fills the config-derived dependencies (`runner.CONFIG_DEPENDENCIES`) from the run's config and
# takes the rest from the caller; `artifact_spec` checks the set is exactly this one and adds the
# package version, so a release never reuses an older release's artifacts.
ARTIFACTS: dict[str, tuple[str, ...]] = {
    # the decoded images of a cacheable source (an image folder): its config and its files
    "dataset": ("source", "content"),
    # the attack's poisoned training set; `surrogate`: what determines an attack's trained tools
    "poisoned_set": ("data", "attack", "surrogate", "seed"),
    # a model of standard supervised training: surrogate, backdoored or retrained
    "model": ("data", "role", "epochs", "loss", "model", "training", "augment", "seed"),
    # the backdoored model of a training-controlled attack: `batch_attack` is the attack's config
    "attacked_model": ("data", "role", "epochs", "loss", "model", "training", "augment", "batch_attack", "seed"),
    # a SimCLR backbone (with its projector) on the unlabeled training set
    "ssl_backbone": ("data", "ssl", "ssl_epochs", "model", "precision", "seed"),
    # a defense stage's resumable state (per-epoch checkpoint)
    "defense_stage": ("data", "stage", "defense", "ssl", "model", "training", "augment", "caps", "seed"),
    # a defense's cached artifact (a split, an encoder, densities), shared across defenses by `spec`
    "defense_artifact": ("data", "artifact", "spec", "ssl", "model", "training", "augment", "caps", "seed"),
    # an attack's cached artifact (an optimised trigger, an encoder)
    "attack_artifact": ("data", "artifact", "spec", "surrogate", "seed"),
    # the classifier an attack trained itself with its trigger generator (IAD, LIRA), the
    # generator's state beside it; `attack`: its config with its capped stage lengths
    "attack_model": ("data", "attack", "model", "training", "augment", "seed"),
}


def artifact_spec(kind: str, deps: dict) -> dict:
    """The spec an artifact of `kind` is keyed by: exactly its declared dependencies, plus the
    package version."""
    import backdoor_bench

    declared = ARTIFACTS.get(kind)
    if declared is None:
        raise KeyError(f"unknown artifact kind {kind!r}: declare it in cache.ARTIFACTS")
    missing, extra = set(declared) - set(deps), set(deps) - set(declared)
    if missing or extra:
        raise KeyError(
            f"artifact {kind!r} depends on {declared}; missing {sorted(missing)}, undeclared {sorted(extra)}"
        )
    return {"kind": kind, **{k: deps[k] for k in declared}, "version": backdoor_bench.__version__}


def spec_key(spec: dict) -> str:
    """A stable 16-hex-digit hash of a JSON-able spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """`write(tmp)` a temporary file beside `path`, flush it to disk, then rename it over `path`:
    readers see the old file or the whole new one, never a partial one. The file gets the mode
    any new file gets (0666 less the umask: with umask 022, readable by the group and others),
    not `tempfile.mkstemp`'s private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path, obj) -> None:
    text = json.dumps(obj, indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_torch_save(path, obj) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike | None, check: Callable[[object], None] | None = None):
    """The one way a stage checkpoint (`partial.ckpt`: a training run's resumable state, or a
    stage's own state such as ISPL's finished components) is read: the object, or None when there
    is none. A file that does not load (truncated, empty, not a checkpoint) or that `check`
    rejects (by raising) is logged as a warning and deleted, so the stage is rebuilt from the
    start instead of failing every rerun."""
    if path is None or not Path(path).exists():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if check is not None:
            check(obj)
        return obj
    except Exception as e:  # a broken checkpoint is never trusted
        log.warning(
            "stage checkpoint %s is unusable (%s: %s); deleting it, the stage starts again", path, type(e).__name__, e
        )
        Path(path).unlink(missing_ok=True)
        return None


class ArtifactCache:
    """`get_or_build(kind, spec, build)`: load the entry for `spec`, or build, store and return it.

    Payloads are dicts of tensors and plain values, loaded with `weights_only=True`.
    `enabled=False` builds every time and stores nothing.
    """

    def __init__(self, root: str | os.PathLike, enabled: bool = True):
        self.root, self.enabled = Path(root), enabled
        self.events: list[dict] = []  # what this run reused or built, for results.json

    def entry(self, kind: str, spec: dict) -> Path:
        return self.root / kind / spec_key(spec)

    @contextmanager
    def _lock(self, entry: Path):
        entry.mkdir(parents=True, exist_ok=True)
        with open(entry / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def load(self, kind: str, spec: dict):
        """The stored payload, or None when absent or corrupt (a corrupt entry is removed)."""
        entry = self.entry(kind, spec)
        meta_path, payload_path = entry / "meta.json", entry / "payload.pt"
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if sha256_file(payload_path) != meta["sha256"]:
                raise ValueError("checksum mismatch")
            return torch.load(payload_path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt or partial: never trust it
            log.warning("cache: %s entry %s is corrupt (%s); rebuilding it", kind, entry.name, e)
            meta_path.unlink(missing_ok=True)
            payload_path.unlink(missing_ok=True)
            return None

    def store(self, kind: str, spec: dict, payload) -> Path:
        entry = self.entry(kind, spec)
        atomic_torch_save(entry / "payload.pt", payload)
        meta = {
            "kind": kind,
            "key": entry.name,
            "spec": spec,
            "sha256": sha256_file(entry / "payload.pt"),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_json(entry / "meta.json", meta)
        return entry

    def get_or_build(self, kind: str, spec: dict, build: Callable[[], dict]):
        if not self.enabled:
            return build()
        entry = self.entry(kind, spec)
        with self._lock(entry):
            payload = self.load(kind, spec)
            name = spec.get("artifact", kind)  # a defense's or attack's artifact goes by its own name
            if payload is not None:
                log.info("cache: reused %s %s from %s", name, entry.name, entry)
                self.events.append({"kind": name, "key": entry.name, "reused": True})
                return payload
            log.info("cache: building %s %s", name, entry.name)
            payload = build()
            self.store(kind, spec, payload)
            log.info("cache: stored %s %s in %s", name, entry.name, entry)
            self.events.append({"kind": name, "key": entry.name, "reused": False})
            return payload
