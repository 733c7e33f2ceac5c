#!/usr/bin/env python
"""Every attack on one sheet: rows attacks; columns clean images, the same poisoned, and the
amplified difference. Attacks whose test trigger differs from the training one (SIG's stronger
delta, LC without the adversarial noise, Adap-* full triggers) get a second row, "<name> test".

    python scripts/gallery.py                                   # digits, every attack
    python scripts/gallery.py dataset=cifar10_jpeg75 --out outputs/gallery_cifar10.png
    python scripts/gallery.py dataset=cifar10_jpeg75 --attacks badnets,wanet,sig
    python scripts/gallery.py --attacks trojan,ssba trainer=tiny        # overrides anywhere

Positional arguments are Hydra overrides, as for run.py. Attacks that train something (trojan,
lc, ssba; iad and lira train the model with their trigger generator) build their artifact, or reuse it from the cache when a run with the same overrides
(dataset, model, trainer, seed) built it: pass the same overrides as those runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backdoor_bench.catalog import members  # noqa: E402
from backdoor_bench.data.imageset import ImageSet  # noqa: E402
from backdoor_bench.errors import ConfigError  # noqa: E402
from backdoor_bench.figures import trigger_gallery  # noqa: E402
from backdoor_bench.runner import Runner  # noqa: E402
from backdoor_bench.validate import validate  # noqa: E402


def _picks(mask: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """Up to `n` indices where `mask` holds, from as many different classes as possible."""
    idx = mask.nonzero().flatten().tolist()
    picks, seen = [], set()
    for i in idx:
        if int(y[i]) not in seen:
            picks.append(i)
            seen.add(int(y[i]))
    picks += [i for i in idx if i not in picks][: n - len(picks)]
    return torch.tensor(sorted(picks[:n]), dtype=torch.long)


def gallery_rows(attack, train: ImageSet, test: ImageSet, n: int, seed: int) -> list:
    """(label, clean, poisoned) rows for one attack: training view, plus the test view if it differs."""
    pick = _picks(attack.eligible(train.y), train.y, n)
    poisoned = attack.stamp(train.x[pick], pick, torch.Generator().manual_seed(seed))
    rows = [(attack.name, train.x[pick], poisoned)]
    if not torch.equal(attack.apply(train.x[pick]), poisoned):  # the test trigger differs
        tpick = _picks(attack.asr_mask(test.y), test.y, n)
        rows.append((f"{attack.name} test", test.x[tpick], attack.apply(test.x[tpick])))
    return rows


def gallery(names: list[str], overrides: list[str], n: int) -> list:
    """The (label, clean, poisoned) rows of every attack in `names` under the Hydra `overrides`."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfgs = {
            name: compose("config", overrides=[*overrides, f"attack={name}", "logger=none", f"paths.root={ROOT}"])
            for name in names
        }
    attacks = {name: validate(cfg)[0] for name, cfg in cfgs.items()}  # every config checked before any data
    base = next(iter(cfgs.values()))
    train, test = Runner(base).load_data()
    rows = []
    for name, cfg in cfgs.items():
        attack = attacks[name]
        attack.num_classes = train.num_classes
        if attack.needs_tools:
            attack.bind(Runner(cfg).attack_tools(train, cfg.attack.get("surrogate_epochs")))
        if attack.trains_model:  # IAD, LIRA: the generator trained with the model (or cached)
            Runner(cfg).attack_model(attack, train)
        rows += gallery_rows(attack, train, test, n, int(cfg.seed))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides (dataset=..., model=..., trainer=...)")
    p.add_argument("--attacks", help="comma-separated attack configs (default: every one but none)")
    p.add_argument("--out", default="outputs/gallery.png", help="PNG to write")
    p.add_argument("--n", type=int, default=4, help="images per row")
    a = p.parse_intermixed_args(argv)  # overrides before or after the options
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    known = members("attack")
    names = a.attacks.split(",") if a.attacks else [n for n in known if "/" not in n and n != "none"]
    try:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"--attacks: no attack config {', '.join(unknown)}: use some of {', '.join(known)}")
        rows = gallery(names, a.overrides, a.n)
    except (ConfigError, HydraException) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    out = trigger_gallery(rows, Path(a.out), n=a.n)
    print(f"gallery: {len(rows)} rows ({len(names)} attacks) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
