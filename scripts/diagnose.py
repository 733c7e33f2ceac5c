"""Stage diagnosis with an oracle: run one defense with one of its stages fed the TRUE poison split,
to learn whether the split or the training stage fails. Outside the pipeline on purpose: `run.py`
never lets the ground truth reach a defense; this script does, and says so in every line it prints.

    python scripts/diagnose.py defense=dbd/cpu attack=badnets --oracle split
    python scripts/diagnose.py defense=dst/cpu attack=badnets --oracle split
    python scripts/diagnose.py defense=dbd/cpu attack=badnets --oracle none   # the defense as run.py runs it

`--oracle split` replaces the defense's sample split by the truth: DBD's labeled set = the samples
the attack left alone; the SD module's (D-ST, D-BR) clean split = a random `clean_ratio` share of
those and its poisoned split = the poisoned samples. `--oracle none` runs the defense unchanged.
Overrides are Hydra's, as for run.py. The oracle's artifacts go to their own cache
(`outputs/cache_oracle`), so nothing it trains is ever reused by a real run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from unittest import mock

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backdoor_bench import pipeline  # noqa: E402
from backdoor_bench.defenses import dbd, sensitivity  # noqa: E402
from backdoor_bench.metrics import attack_metrics, detection_metrics  # noqa: E402
from backdoor_bench.runner import Runner  # noqa: E402
from backdoor_bench.training.fit import eval_device, predict  # noqa: E402

log = logging.getLogger("diagnose")


def true_groups(poisoned: torch.Tensor, clean_ratio: float, seed: int) -> torch.Tensor:
    """The SD module's three groups from the truth: CLEAN = a random `clean_ratio` share of all
    samples drawn from the unpoisoned ones, POISONED = every poisoned sample, the rest UNCERTAIN."""
    g = torch.full((len(poisoned),), sensitivity.UNCERTAIN, dtype=torch.int8)
    clean = (~poisoned).nonzero().flatten()
    n_c = min(len(clean), int(clean_ratio * len(poisoned)))
    g[clean[torch.randperm(len(clean), generator=torch.Generator().manual_seed(seed))[:n_c]]] = sensitivity.CLEAN
    g[poisoned] = sensitivity.POISONED
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--oracle", choices=["none", "split"], default="split")
    ap.add_argument("--out", default=None, help="append the result as one JSON line to this file")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "trainer.progress_bar=false", *args.overrides])
    with open_dict(cfg):
        cfg.paths.root, cfg.paths.output_dir = str(ROOT), str(ROOT / "outputs" / "diagnose")
        if args.oracle != "none":
            cfg.paths.cache_dir = str(ROOT / "outputs" / "cache_oracle")
        else:
            cfg.paths.cache_dir = str(ROOT / "outputs" / "cache")
    OmegaConf.resolve(cfg)
    t0 = time.perf_counter()
    attack, defense = pipeline.validate(cfg)
    runner = Runner(cfg)
    pl.seed_everything(cfg.seed, workers=False, verbose=False)
    train, test = runner.load_data()
    ps = pipeline.poison(runner, attack, train)
    truth = ps.poisoned
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = pipeline.defense_context(runner, defense, ps, train, out_dir)
    timings = runner.timings

    patches = []
    if args.oracle == "split":
        if hasattr(defense, "sd"):  # D-ST, D-BR: the SD module's split
            groups = true_groups(truth, float(defense.sd["clean_ratio"]), cfg.seed)
            fake = lambda ctx_, sd: (truth.float(), groups)  # noqa: E731
            for mod in ("backdoor_bench.defenses.dst", "backdoor_bench.defenses.dbr"):
                patches.append(mock.patch(f"{mod}.sample_split", fake))
        elif isinstance(defense, dbd.DBD):  # the labeled set = the samples the attack left alone
            patches.append(mock.patch.object(dbd, "high_credible", lambda losses, eps: ~truth))
        else:
            raise SystemExit(f"--oracle split is not defined for defense {defense.name}")
    for p in patches:
        p.start()
    try:
        outcome = defense.run(ctx)
    finally:
        for p in patches:
            p.stop()
    kw = {"batch_size": 512, "device": eval_device(cfg.trainer)}
    triggered = attack.apply(test.x)
    m = attack_metrics(
        predict(outcome.model, test.x, **kw),
        predict(outcome.model, triggered, **kw),
        test.y,
        attack.target_label(test.y),
        attack.asr_mask(test.y),
    )
    det = None
    if outcome.verdict is not None:
        v = outcome.verdict
        det = detection_metrics(v.kept, v.labels, ps.train.y, truth, ps.y_true, v.trusted)
    row = {
        "oracle": args.oracle,
        "overrides": args.overrides,
        "acc": m["acc"],
        "asr": m["asr"],
        "detection": det,
        "extra": outcome.extra,
        "seconds": round(time.perf_counter() - t0, 1),
        "timing": timings,
    }
    print(
        f"ORACLE={args.oracle} {' '.join(args.overrides)}: ACC {100 * m['acc']:.1f} ASR "
        f"{100 * (m['asr'] or 0):.1f} ({row['seconds']}s)"
    )
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


if __name__ == "__main__":
    main()
