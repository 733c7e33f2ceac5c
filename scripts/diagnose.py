"""Stage diagnosis with an oracle: run one defense with one of its stages fed the TRUE poison split,
to learn whether the split or the training stage fails. Outside the pipeline on purpose: `run.py`
never lets the ground truth reach a defense; this script does, and says so in every line it prints.

    python scripts/diagnose.py defense=dbd/cpu attack=badnets --oracle split
    python scripts/diagnose.py defense=dst/cpu attack=badnets --oracle split
    python scripts/diagnose.py defense=dbd/cpu attack=badnets --oracle none   # the defense as run.py runs it
    python scripts/diagnose.py defense=dbr/digits attack=badnets --sd-ranking   # FCT's ranking per tau
    python scripts/diagnose.py defense=ssl_knn attack=blended --ssl-embedding   # the SimCLR embedding's kNN
    python scripts/diagnose.py defense=asd/cpu attack=badnets --asd-trace --out trace.jsonl   # ASD's pools

`--sd-ranking` (D-ST, D-BR) trains the SD module's sensitivity model as configured and scores the
training set with FCT under several tau (rotation range x draws; the configured translation),
printing each ranking's AUROC against the true poison mask and the poisoned share of its top
`poison_ratio` (the split D-BR unlearns). Nothing is trained after it.

`--ssl-embedding` (DBD, ssl_knn, flow_relabel: the shared SimCLR backbone, from the run's own cache,
trained as `run.py` trains it) measures the embedding the cleansers rely on, for the projector
output z and the backbone features E(x) at k = 10 and 50: how often a clean sample's neighbours'
majority is its own label (the kNN accuracy), how often a poisoned sample's is not its given label
(what the kNN cleanser can flag) and is its true one (what relabeling can restore), the share of
poisoned samples among a poisoned sample's neighbours against a clean one's (does the trigger
cluster?), and the per-class net outflow that ssl_knn's class gate reads.

`--asd-trace` (ASD) runs the defense unchanged (as `--oracle none`, on the run's own cache, so it
resumes per epoch like `run.py`) and scores every epoch's split against the truth after it is made:
the pool's size and poisoned share, the share of all poison left labeled, and the AUROC of the
ranking key (the loss; in the meta-split also the plain loss beside the loss reduction). The truth
only reads the split; nothing the defense computes depends on it.

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
from backdoor_bench.defenses import asd, dbd, sensitivity  # noqa: E402
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
    ap.add_argument("--sd-ranking", action="store_true", help="score FCT's ranking per tau against the truth")
    ap.add_argument("--ssl-embedding", action="store_true", help="the SimCLR embedding's kNN agreement, per group")
    ap.add_argument("--asd-trace", action="store_true", help="score every ASD epoch's pool against the truth")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", "trainer.progress_bar=false", *args.overrides])
    with open_dict(cfg):
        cfg.paths.root, cfg.paths.output_dir = str(ROOT), str(ROOT / "outputs" / "diagnose")
        # only a run the truth changes gets its own cache; the checks that merely read the truth
        # (the SimCLR embedding, ASD's trace) reuse and resume the run's
        truth_changes_it = args.oracle != "none" and not (args.ssl_embedding or args.asd_trace)
        cfg.paths.cache_dir = str(ROOT / "outputs" / ("cache_oracle" if truth_changes_it else "cache"))
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

    if args.sd_ranking:
        return sd_ranking(ctx, defense, truth, args.out, test, attack)
    if args.ssl_embedding:
        return ssl_embedding_check(ctx, truth, ps.y_true, args.out)
    patches = []
    if args.asd_trace:
        patches = asd_trace_patches(defense, truth, args.out)
    elif args.oracle == "split":
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
    m = model_metrics(outcome.model, test, attack, eval_device(cfg.trainer))
    det = None
    if outcome.verdict is not None:
        v = outcome.verdict
        det = detection_metrics(v.kept, v.labels, ps.train.y, truth, ps.y_true, v.trusted)
    label = "none (asd-trace)" if args.asd_trace else args.oracle
    row = {
        "oracle": label,
        "overrides": args.overrides,
        "acc": m["acc"],
        "asr": m["asr"],
        "detection": det,
        "extra": outcome.extra,
        "seconds": round(time.perf_counter() - t0, 1),
        "timing": timings,
    }
    print(
        f"ORACLE={label} {' '.join(args.overrides)}: ACC {100 * m['acc']:.1f} ASR "
        f"{100 * (m['asr'] or 0):.1f} ({row['seconds']}s)"
    )
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


def asd_trace_patches(defense, truth: torch.Tensor, out: str | None) -> list:
    """Wrappers around ASD's pool choices that score each pool against the truth (read only)."""
    from sklearn.metrics import roc_auc_score

    if not isinstance(defense, asd.ASD):
        raise SystemExit(f"--asd-trace needs defense=asd (or a preset of it), not {defense.name}")
    losses: list[torch.Tensor] = []
    real_loss, real_aware, real_share = asd.per_sample_loss, asd.class_aware_pool, asd.lowest_share
    real_stage_of = asd.stage_of
    now: dict = {}  # the epoch (0-based) and stage of the split being made

    def auroc(scores: torch.Tensor) -> float | None:
        return float(roc_auc_score(truth.numpy(), scores.float().cpu().numpy())) if truth.any() else None

    def record(pool: torch.Tensor, scores: torch.Tensor) -> None:
        stage, size, hit = now["stage"], int(pool.sum()), int((pool & truth).sum())
        row = {
            "epoch": now["epoch"] + 1,
            "stage": stage,
            "pool": size,
            "pool_poisoned": hit,
            "pool_poisoned_share": hit / max(size, 1),
            "poison_left_labeled": hit / max(int(truth.sum()), 1),
            "auroc_key": auroc(scores),
        }
        if stage == "meta" and len(losses) >= 2:
            row["auroc_loss"] = auroc(losses[-2])  # the current model's loss, before the virtual epoch
        print(
            f"ASD TRACE vs THE TRUTH: split {row['epoch']} ({stage}): pool {row['pool']}, "
            f"{row['pool_poisoned']} poisoned ({100 * row['pool_poisoned_share']:.1f}%), "
            f"{100 * row['poison_left_labeled']:.1f}% of the poison labeled; AUROC of the key "
            f"{row['auroc_key'] or float('nan'):.3f}"
            + (f", of the plain loss {row['auroc_loss']:.3f}" if "auroc_loss" in row else ""),
            flush=True,
        )
        if out:
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")

    def stage_of(epoch, lengths):
        now.update(epoch=int(epoch), stage=real_stage_of(epoch, lengths))
        return now["stage"]

    def loss(*a, **kw):
        losses.append(real_loss(*a, **kw).cpu())
        del losses[:-2]  # the model's loss and, in the meta-split, the virtual model's
        return losses[-1]

    def aware(loss_, y, seeds, per_class):
        pool = real_aware(loss_, y, seeds, per_class)
        record(pool, loss_)
        return pool

    def share(scores, eps):
        pool = real_share(scores, eps)
        record(pool, scores)
        return pool

    return [
        mock.patch.object(asd, "stage_of", stage_of),
        mock.patch.object(asd, "per_sample_loss", loss),
        mock.patch.object(asd, "class_aware_pool", aware),
        mock.patch.object(asd, "lowest_share", share),
    ]


def model_metrics(model, test, attack, device) -> dict:
    """ACC and ASR of `model` on the test set, as the pipeline's evaluation computes them."""
    kw = {"batch_size": 512, "device": device}
    return attack_metrics(
        predict(model, test.x, **kw),
        predict(model, attack.apply(test.x), **kw),
        test.y,
        attack.target_label(test.y),
        attack.asr_mask(test.y),
    )


def sd_ranking(ctx, defense, truth: torch.Tensor, out: str | None, test, attack) -> None:
    """FCT's ranking of the training set under several tau, scored against the truth, after the
    sensitivity model's own test ACC and ASR (has it learned the trigger?)."""
    from sklearn.metrics import roc_auc_score

    if not hasattr(defense, "sd"):
        raise SystemExit(f"--sd-ranking needs a defense with an SD module (dst, dbr), not {defense.name}")
    sd = sensitivity.plain(defense.sd)
    t0 = time.perf_counter()
    model = sensitivity.sensitivity_model(ctx, sd)
    m = model_metrics(model, test, attack, ctx.device)
    arch = (sd.get("model") or {}).get("_target_", "the run's model")
    print(
        f"SD MODEL ({arch}, {time.perf_counter() - t0:.0f}s): test ACC {100 * m['acc']:.1f} "
        f"ASR {100 * (m['asr'] or 0):.1f}"
    )
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"sd_model": arch, "acc": m["acc"], "asr": m["asr"]}) + "\n")
    k = int(float(sd["poison_ratio"]) * len(truth))
    translate = float(sd["transform"]["translate"])
    for degrees in (180.0, 15.0, 0.0):
        for draws in (1, 8):
            s = (
                sensitivity.fct(
                    model,
                    ctx.train.x,
                    seed=ctx.seed,
                    draws=draws,
                    device=ctx.device,
                    degrees=degrees,
                    translate=translate,
                )
                .float()
                .cpu()
            )
            top = s.argsort(descending=True)[:k]
            row = {
                "degrees": degrees,
                "translate": translate,
                "draws": draws,
                "auroc": float(roc_auc_score(truth.numpy(), s.numpy())) if truth.any() else None,
                "top_precision": float(truth[top].float().mean()),
            }
            print(
                f"SD RANKING vs THE TRUTH: degrees {degrees:g} translate {translate:g} draws {draws}: "
                f"AUROC {row['auroc'] or float('nan'):.3f}, top {k} {100 * row['top_precision']:.1f}% poisoned"
            )
            if out:
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")


def ssl_embedding_check(ctx, truth: torch.Tensor, y_true: torch.Tensor, out: str | None) -> None:
    """The shared SimCLR embedding's kNN agreement, clean and poisoned samples apart (the truth
    used only to score, after the backbone was trained)."""
    from backdoor_bench.defenses.ssl_knn import knn_consistency, knn_indices, net_outflow, ssl_embedding

    model, y, num_classes, clean = ctx.ssl_backbone(), ctx.train.y, ctx.train.num_classes, ~truth
    for embedding in ("projector", "backbone"):
        h = ssl_embedding(model, ctx.train.x, embedding)
        for k in (10, 50):
            nb = knn_indices(h, k)
            s, majority, _ = knn_consistency(nb, y, num_classes)
            row = {
                "embedding": embedding,
                "k": k,
                "clean_knn_acc": float((majority[clean] == y[clean]).float().mean()),
                "clean_flagged": float((s[clean] < 0.5).float().mean()),
                "poisoned_majority_not_label": float((majority[truth] != y[truth]).float().mean()),
                "poisoned_majority_true_label": float((majority[truth] == y_true[truth]).float().mean()),
                "poisoned_flagged": float((s[truth] < 0.5).float().mean()),
                "poisoned_neighbours_of_poisoned": float(truth[nb[truth]].float().mean()),
                "poisoned_neighbours_of_clean": float(truth[nb[clean]].float().mean()),
                "net_outflow": [round(float(a), 3) for a in net_outflow(y, majority, s < 0.5, num_classes)],
            }
            print(
                f"SSL EMBEDDING vs THE TRUTH: {embedding} k={k}: clean kNN accuracy "
                f"{100 * row['clean_knn_acc']:.1f}%, clean flagged (s < 0.5) {100 * row['clean_flagged']:.1f}%; "
                f"poisoned flagged {100 * row['poisoned_flagged']:.1f}%, majority = true label "
                f"{100 * row['poisoned_majority_true_label']:.1f}%; poisoned share of the neighbours of "
                f"poisoned / clean samples {100 * row['poisoned_neighbours_of_poisoned']:.1f}% / "
                f"{100 * row['poisoned_neighbours_of_clean']:.1f}%; net outflow {row['net_outflow']}"
            )
            if out:
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
