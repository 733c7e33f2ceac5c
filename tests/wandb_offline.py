"""Read an offline W&B run from its files, no network and no W&B account: the run's records live in
`run-<id>.wandb` (a LevelDB-style log of protobuf records: a 7-byte header, then 32 KiB blocks of
chunks with a 7-byte header of checksum, length and type), its media under `files/media/`."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[bytes]:
    """The records of a `.wandb` file (checksums not checked)."""
    buf = Path(path).read_bytes()
    assert buf[:4] == b":W&B", f"{path} is not a W&B transaction log"
    out, part, pos = [], b"", 7
    while pos + 7 <= len(buf):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", buf[pos : pos + 7])
        pos += 7
        if kind == 0:  # zero padding up to the block's end
            pos += left - 7
            continue
        part += buf[pos : pos + n]
        pos += n
        if kind in (FULL, LAST):
            out.append(part)
            part = b""
    return out


def _set(tree: dict, keys: list[str], value) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def read_offline_run(run_dir: Path) -> dict:
    """{name, group, tags, config, summary, files} of the offline run in `run_dir`
    (`.../wandb/offline-run-*`): the config as logged, the summary as at the end of the run, and
    the paths of its files relative to `run_dir/files`."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    out: dict = {"config": {}, "summary": {}}
    for data in records(next(run_dir.glob("run-*.wandb"))):
        r = pb.Record()
        r.ParseFromString(data)
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(name=r.run.display_name, group=r.run.run_group, tags=list(r.run.tags))
            for item in r.run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in r.summary.update:
                _set(out["summary"], list(item.nested_key) or [item.key], json.loads(item.value_json))
    files = run_dir / "files"
    out["files"] = sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file())
    return out
