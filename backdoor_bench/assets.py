"""The papers' trigger files, fetched on request from their public repositories (the project ships none).

    python -m backdoor_bench.assets list                          # every known asset: fetched or not
    python -m backdoor_bench.assets fetch hello_kitty --sha256 hello_kitty=<hex>
    python -m backdoor_bench.assets fetch                         # every asset

Files go into the asset folder (`--dir`; `assets.dir` in a run's config; default
`$BACKDOOR_BENCH_ASSETS` or `~/.cache/backdoor_bench/assets`) and are checked against a sha256: the
one pinned in `REGISTRY`, or, where none is pinned, the one the user gives with `--sha256
NAME=HEX` (recorded in the folder's `manifest.json`). No hash is pinned yet: we could not read
the files' bytes from a source we trust, so the user fills the hash they verified.

A config refers to an asset by name, `attack.pattern_path: asset:hello_kitty`. Before the attack
is built, `resolve_attack_config` replaces the reference by the file's path; a file not fetched (or
not matching its hash) stops the run with one line naming the fetch command, unless
`assets.stand_ins=true`, where the key becomes null (the attack's procedural stand-in) and the run
records it in results.json (`assets`, `warnings`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from backdoor_bench.cache import atomic_write, atomic_write_json, sha256_file
from backdoor_bench.errors import ConfigError

PREFIX = "asset:"
FETCH = "python -m backdoor_bench.assets fetch"


@dataclass(frozen=True)
class Asset:
    url: str
    file: str
    source: str  # who uses it, in words
    sha256: str | None = None  # pinned; None: the user gives it at fetch time


# Raw URLs pinned to commits, so a moved branch does not break them.
REGISTRY: dict[str, Asset] = {
    "hello_kitty": Asset(
        "https://raw.githubusercontent.com/SCLBD/BackdoorBench/59f6cdaa9256652bd8f3c21aa517d348999288cf/"
        "resource/blended/hello_kitty.jpeg",
        "hello_kitty.jpeg",
        "Blend's image (BackdoorBench at 0.2; DBD and the flows paper blend it at 0.1, D-ST/D-BR at 0.2)",
    ),
    "dbd_badnets_patch": Asset(
        "https://raw.githubusercontent.com/SCLBD/DBD/4acfdc3a0b96ccd1e70be6406be65a30212600fa/data/trigger/cifar_1.png",
        "dbd_cifar_1.png",
        "DBD's BadNets trigger (a 32x32 image, black but for the 2x2 patch; Huang et al., ICLR 2022)",
    ),
    "dst_signal_mask": Asset(
        "https://raw.githubusercontent.com/bboylyg/NAD/a5a10f1ee746d51e75945821027ade76e88e2901/"
        "trigger/signal_cifar10_mask.npy",
        "signal_cifar10_mask.npy",
        "D-ST/D-BR's Blend-Strip mask (their code loads NAD's trigger/ folder; Li et al., ICLR 2021)",
    ),
    "dst_trojan_trigger": Asset(
        "https://raw.githubusercontent.com/bboylyg/NAD/a5a10f1ee746d51e75945821027ade76e88e2901/"
        "trigger/best_square_trigger_cifar10.npz",
        "best_square_trigger_cifar10.npz",
        "D-ST/D-BR's Trojan trigger, added to the image (NAD's trigger/ folder)",
    ),
    "backdoorbench_lf_cifar10_preactresnet18": Asset(
        "https://raw.githubusercontent.com/SCLBD/BackdoorBench/4fe667f4fde846d351e199088eefc791f5737ada/"
        "resource/lowFrequency/cifar10_preactresnet18_0_255.npy",
        "lf_cifar10_preactresnet18_0_255.npy",
        "BackdoorBench's LF pattern for CIFAR-10 / PreActResNet-18, added to the image (Zeng et al., ICCV 2021)",
    ),
}


def default_dir() -> Path:
    return Path(os.environ.get("BACKDOOR_BENCH_ASSETS", "~/.cache/backdoor_bench/assets")).expanduser()


def _manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def expected_sha256(name: str, folder: Path) -> str | None:
    """The pinned hash, else the one the user gave when fetching."""
    return REGISTRY[name].sha256 or _manifest(folder).get(name, {}).get("sha256")


def locate(name: str, folder: Path) -> Path | None:
    """The asset's file when it is fetched and matches its sha256, else None."""
    if name not in REGISTRY:
        raise ConfigError(f"asset {name!r} is unknown: use one of {', '.join(REGISTRY)}")
    path = folder / REGISTRY[name].file
    want = expected_sha256(name, folder)
    return path if path.is_file() and want is not None and sha256_file(path) == want else None


def fetch(name: str, folder: Path, sha256: str | None = None) -> Path:
    """Download one asset into `folder`, check its sha256, record it in the manifest."""
    if name not in REGISTRY:
        raise ConfigError(f"asset {name!r} is unknown: use one of {', '.join(REGISTRY)}")
    asset = REGISTRY[name]
    want = (asset.sha256 or sha256 or "").lower()
    if not want:
        raise ConfigError(f"asset {name} has no pinned sha256: give the one you verified, --sha256 {name}=<hex>")
    if asset.sha256 and sha256 and sha256.lower() != asset.sha256:
        raise ConfigError(f"--sha256 {name}={sha256} differs from the pinned {asset.sha256}: drop it")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / asset.file
    with urllib.request.urlopen(asset.url, timeout=60) as r:  # https, or a test's local file: URL
        data = r.read()
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ConfigError(f"asset {name} from {asset.url} has sha256 {got}, not {want}: not kept")
    atomic_write(path, lambda t: Path(t).write_bytes(data))
    manifest = _manifest(folder)
    manifest[name] = {"file": asset.file, "sha256": want, "url": asset.url}
    atomic_write_json(folder / "manifest.json", manifest)
    return path


def listing(folder: Path) -> list[str]:
    """One line per known asset: name, state, path or URL, and who uses it."""
    lines = []
    for name, a in REGISTRY.items():
        path = locate(name, folder)
        state = "fetched" if path else ("no sha256" if expected_sha256(name, folder) is None else "missing")
        lines.append(f"{name:20s} {state:9s} {path or a.url}  ({a.source})")
    return lines


def resolve_attack_config(attack_cfg, assets_cfg):
    """The attack config with every `asset:NAME` value replaced by its file (or by null, the
    procedural stand-in, when `assets.stand_ins` allows it); and {key: path or 'stand-in'}."""
    from omegaconf import OmegaConf

    from backdoor_bench.errors import check_value

    cfg = OmegaConf.to_container(attack_cfg, resolve=True) if OmegaConf.is_config(attack_cfg) else dict(attack_cfg)
    assets_cfg = assets_cfg or {}
    folder = Path(str(assets_cfg.get("dir") or default_dir())).expanduser()
    check_value("assets.stand_ins", assets_cfg.get("stand_ins", False), bool, default=False)
    stand_ins = bool(assets_cfg.get("stand_ins", False))
    used = {}
    for key, value in cfg.items():
        if not (isinstance(value, str) and value.startswith(PREFIX)):
            continue
        name = value[len(PREFIX) :]
        path = locate(name, folder)
        if path is None and not stand_ins:
            raise ConfigError(
                f"attack.{key}={value} is not in {folder}: run `{FETCH} {name}` "
                "(or assets.stand_ins=true for the procedural stand-in)"
            )
        cfg[key] = str(path) if path else None
        used[key] = {"asset": name, "path": str(path) if path else "stand-in"}
    return OmegaConf.create(cfg), used


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m backdoor_bench.assets", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("fetch", "list"))
    p.add_argument("names", nargs="*", help="assets to fetch (default: every one)")
    p.add_argument(
        "--dir", type=Path, default=None, help="asset folder (default: $BACKDOOR_BENCH_ASSETS or ~/.cache/...)"
    )
    p.add_argument("--sha256", action="append", default=[], metavar="NAME=HEX", help="the hash of an unpinned asset")
    a = p.parse_args(argv)
    folder = (a.dir or default_dir()).expanduser()
    try:
        hashes = dict(h.split("=", 1) for h in a.sha256)
    except ValueError:
        print("error: --sha256 takes NAME=HEX", file=sys.stderr)
        return 2
    try:
        if a.command == "fetch":
            for name in a.names or list(REGISTRY):
                print(f"fetched {name} -> {fetch(name, folder, hashes.get(name))}")
        print("\n".join(listing(folder)))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: download failed ({e}): check the network or fetch the file by hand", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
