"""Turn run directories into the paper-style table: rows attack, columns defense x metric, in %
(counts such as fp and fn stay counts)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"
METRIC_NAMES = {
    "acc": "ACC",
    "asr": "ASR",
    "ra": "RA",
    "acc_nontarget": "ACC-NT",
    "tpr": "TPR",
    "fpr": "FPR",
    "precision": "Prec",
    "relabel_acc": "RelAcc",
    "tmr": "TMR",
    "kept_poison_rate": "KeptP",
    "fp": "FP",
    "fn": "FN",
    # an input-level detector (STRIP) on test inputs: its own section of results.json
    "input_tpr": "In-TPR",
    "input_fpr": "In-FPR",
    "input_auroc": "In-AUROC",
    "input_asr_passed": "ASR-pass",
}
COUNTS = {
    "tp",
    "fp",
    "fn",
    "n_flagged",
    "n_removed",
    "n_relabeled",
    "n_trusted",
    "input_n_clean",
    "input_n_triggered",
    "input_n_passed",
}  # reported as they are, not in %


def _model_name(cfg: dict) -> str:
    m = cfg.get("model", {})
    name = str(m.get("_target_", "?")).rsplit(".", 1)[-1]
    return f"{name}-w{m['width']}" if "width" in m else name


def _defense_label(d: dict, choice: str | None = None) -> str | None:
    """The defense's `label` when its config sets one; else its option's full name (`choice`,
    e.g. `nad/dbd`; older results.json files have none: its `name`), with a non-default `variant`
    (an ablation, e.g. DBD's) as `name[variant]`."""
    if d.get("label"):
        return d["label"]
    v, name = d.get("variant"), choice or d.get("name")
    return f"{name}[{v}]" if v not in (None, "full") else name


META = ("dataset", "model", "attack", "defense", "poison_rate", "seed")  # a run's identity, not a metric
# an option's name in its config (`badnets` of `dst/badnets`): what reference tables call it
BASE_NAMES = ("attack_name", "defense_name")
NOT_METRICS = {"run", *META, *BASE_NAMES, "time_s"}


def _read_json(path: Path, warn: Callable[[str], None]) -> dict | None:
    """A JSON object from `path`, or None (after `warn`) when it is unreadable or not an object."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warn(f"skipping {path}: not readable JSON ({e})")
        return None
    if not isinstance(obj, dict):
        warn(f"skipping {path}: a JSON {type(obj).__name__}, not a run's record")
        return None
    return obj


def load_runs(dirs: list[str | Path], warn: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every results.json (one row each) and every error.json (failed sweep points) under `dirs`.
    A file that is not a JSON object is skipped, with `warn(message naming it)` (default: a
    logged warning): one bad file never costs the others."""
    warn = warn or log.warning
    rows, errors = [], []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise FileNotFoundError(f"{d} does not exist")
        for path in sorted(d.rglob("results.json")):
            r = _read_json(path, warn)
            if r is None:
                continue
            cfg = r.get("config") if isinstance(r.get("config"), dict) else {}
            choices = r.get("choices") if isinstance(r.get("choices"), dict) else {}
            row = {
                "run": str(path.parent),
                "dataset": r.get("data", {}).get("name"),
                "model": _model_name(cfg),
                "attack": choices.get("attack") or cfg.get("attack", {}).get("name"),
                "defense": _defense_label(cfg.get("defense", {}), choices.get("defense")),
                "attack_name": cfg.get("attack", {}).get("name"),
                "defense_name": _defense_label(cfg.get("defense", {})),
                "poison_rate": cfg.get("attack", {}).get("poison_rate"),
                "seed": cfg.get("seed"),
                "time_s": r.get("timing", {}).get("total"),
            }
            if not isinstance(r.get("metrics"), dict):
                warn(f"skipping {path}: it has no metrics")
                continue
            row.update(r["metrics"])
            row.update({k: v for k, v in (r.get("detection") or {}).items()})
            row.update({f"input_{k}": v for k, v in (r.get("input_detection") or {}).items()})
            row["warnings"] = len(r.get("warnings") or [])
            rows.append(row)
        for path in sorted(d.rglob("error.json")):
            e = _read_json(path, warn)
            if e is not None:
                errors.append({"run": str(path.parent), **e})
    return pd.DataFrame(rows), pd.DataFrame(errors)


def _order(values, first="none") -> list:
    seen = list(dict.fromkeys(values))
    return ([first] if first in seen else []) + [v for v in seen if v != first]


AGGREGATES = ("mean", "median")


def paper_table(
    runs: pd.DataFrame, metrics=("acc", "asr"), rows: str = "attack", keep=(), agg: str = "mean"
) -> pd.DataFrame:
    """The `agg` (mean or median) over the runs of each cell (seeds, or scenarios such as seed
    002's three trigger draws per pair, whose paper reports the median), in % (counts as counts),
    indexed by `rows`; columns (defense, metric name).

    Runs on different datasets, models or poison rates are never aggregated together: any of those
    that varies, and any key in `keep`, becomes an outer index level."""
    if runs.empty:
        raise ValueError("no results.json found")
    if agg not in AGGREGATES:
        raise ValueError(f"agg={agg!r} is unknown: use one of {', '.join(AGGREGATES)}")
    metrics = list(metrics)
    known = [c for c in runs.columns if c not in NOT_METRICS and c != "warnings"]
    unknown = [m for m in metrics if m not in known]
    if unknown or not metrics:
        raise ValueError(
            f"--metrics {','.join(metrics)}: {', '.join(unknown) or 'none given'} not in these runs; "
            f"use some of {', '.join(known)}"
        )
    if rows not in runs.columns or rows in ("defense", "run") or rows in known:
        valid = [k for k in META if k != "defense" and k in runs.columns]
        raise ValueError(f"--rows {rows} is not a run key: use one of {', '.join(valid)}")
    keys = [
        k for k in ("dataset", "model", "poison_rate") if k != rows and (k in keep or runs[k].nunique(dropna=False) > 1)
    ]
    runs = runs.fillna({k: "-" for k in keys})
    groups = runs.groupby([*keys, rows, "defense"], sort=False)[metrics]
    long = groups.median(numeric_only=True) if agg == "median" else groups.mean(numeric_only=True)
    long = long.mul([1 if m in COUNTS else 100 for m in metrics], axis=1)
    table = long.unstack("defense")
    table.columns = table.columns.swaplevel(0, 1)
    table = table.reindex(columns=pd.MultiIndex.from_product([_order(runs["defense"]), metrics]))
    if not keys:
        table = table.reindex(_order(runs[rows]))
        table.index.name = rows
    table.columns = pd.MultiIndex.from_tuples([(d, METRIC_NAMES.get(m, m)) for d, m in table.columns])
    return table.dropna(axis=1, how="all")


def read_reference(name_or_path: str) -> pd.DataFrame:
    """Published numbers: a CSV path, or a name under backdoor_bench/reference/ (e.g. `dbd/table1`).
    Columns: attack, defense, then metric columns in % (acc, asr, ...)."""
    path = Path(name_or_path)
    if not path.exists():
        path = REFERENCE_DIR / (name_or_path if name_or_path.endswith(".csv") else f"{name_or_path}.csv")
    if not path.exists():
        known = sorted(str(p.relative_to(REFERENCE_DIR).with_suffix("")) for p in REFERENCE_DIR.rglob("*.csv"))
        raise FileNotFoundError(f"no reference {name_or_path!r}: give a CSV path or one of {known}")
    return pd.read_csv(path, comment="#")


def base_names(runs: pd.DataFrame) -> dict:
    """{an attack's or defense's label in the table (`dst/badnets`): its config name (`badnets`)}."""
    pairs = [zip(runs[c], runs[f"{c}_name"]) for c in ("attack", "defense") if f"{c}_name" in runs]
    return {label: name for pair in pairs for label, name in pair if label != name and isinstance(name, str)}


def with_reference(table: pd.DataFrame, reference: pd.DataFrame, aliases: dict | None = None) -> pd.DataFrame:
    """Interleave ours, the paper's and ours-minus-paper for every (defense, metric) column. A
    reference with a `poison_rate` column is matched on the rate too when the table has one. A
    row or column the reference lacks by its label (a preset, `dst/badnets`) is matched by its
    config name from `aliases` (`base_names`: `badnets`)."""
    by_rate = "poison_rate" in reference.columns and "poison_rate" in (table.index.names or [])
    ref = reference.set_index(["attack", "defense", *(["poison_rate"] if by_rate else [])])
    attacks = table.index.get_level_values(-1)  # the row key is the innermost level
    rates = table.index.get_level_values("poison_rate") if by_rate else [None] * len(table)
    aliases = aliases or {}

    def published(metric: str, a: str, d: str, r) -> float:
        for key in ((a, d), (aliases.get(a, a), d), (a, aliases.get(d, d)), (aliases.get(a, a), aliases.get(d, d))):
            key = (*key, float(r)) if by_rate else key
            if metric in ref and key in ref.index:
                return ref[metric].get(key, float("nan"))
        return float("nan")

    cols, data = [], {}
    for defense, mname in table.columns:
        metric = next((k for k, v in METRIC_NAMES.items() if v == mname), mname)
        ours = table[(defense, mname)]
        paper = pd.Series(
            [published(metric, a, defense, r) for a, r in zip(attacks, rates)],
            index=table.index,
            dtype=float,
        )
        for kind, values in (("ours", ours), ("paper", paper), ("delta", ours - paper)):
            cols.append((defense, mname, kind))
            data[(defense, mname, kind)] = values
    out = pd.DataFrame(data, index=table.index)
    out.columns = pd.MultiIndex.from_tuples(cols)
    return out


def to_markdown(table: pd.DataFrame) -> str:
    flat = table.copy()
    flat.columns = [" ".join(map(str, c)) for c in flat.columns]
    return flat.to_markdown(floatfmt=".2f")


def bar_chart(table: pd.DataFrame, path: str | Path) -> Path:
    """Grouped bars: one group per attack, one bar per (defense, metric) cell."""
    from backdoor_bench.figures import save_figure

    cols = [c for c in table.columns if c[-1] in ("ours",) or len(c) == 2]
    data = table[cols]
    data.columns = [" ".join(str(x) for x in c if x != "ours") for c in cols]
    ax = data.plot.bar(figsize=(max(6, 1.2 * len(data) * max(1, len(cols)) / 2), 4), rot=0, width=0.8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("ACC / ASR per attack and defense")
    return save_figure(ax.get_figure(), path)
