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
NOT_METRICS = {"run", *META, *BASE_NAMES, "time_s", "config", "warnings"}
NOT_IDENTITY = ("paths", "logger")  # config keys that do not make two runs different experiments


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


def _identity(cfg: dict) -> str:
    """What makes a run one experiment: its config without output paths and logger settings."""
    return json.dumps({k: v for k, v in cfg.items() if k not in NOT_IDENTITY}, sort_keys=True, default=str)


def load_runs(dirs: list[str | Path], warn: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every results.json (one row each) and every error.json (failed sweep points) under `dirs`.
    A file that is not a JSON object is skipped, with `warn(message naming it)` (default: a
    logged warning): one bad file never costs the others. A run is counted once: a folder found
    under two of `dirs` (or through a link) is one run, and so are two folders holding the same
    config (same seed: a copy or a rerun, not a second seed), with a warning naming both. The
    run's config is read from its results.json, never from its folder name."""
    warn = warn or log.warning
    rows, errors, seen_dirs, seen_cfgs = [], [], set(), {}
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise FileNotFoundError(f"{d} does not exist")
        for path in sorted(d.rglob("results.json")):
            if path.resolve().parent in seen_dirs:
                continue
            seen_dirs.add(path.resolve().parent)
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
            identity = _identity(cfg) if cfg else str(path.resolve())
            if identity in seen_cfgs:
                warn(f"{path.parent} is the same run as {seen_cfgs[identity]} (same config and seed): counted once")
                continue
            seen_cfgs[identity] = path.parent
            row["config"] = cfg
            row.update(r["metrics"])
            row.update({k: v for k, v in (r.get("detection") or {}).items()})
            row.update({f"input_{k}": v for k, v in (r.get("input_detection") or {}).items()})
            row["warnings"] = len(r.get("warnings") or [])
            rows.append(row)
        for path in sorted(d.rglob("error.json")):
            if path.resolve().parent in seen_dirs:
                continue
            seen_dirs.add(path.resolve().parent)
            e = _read_json(path, warn)
            if e is not None:
                errors.append({"run": str(path.parent), **e})
    return pd.DataFrame(rows), pd.DataFrame(errors)


def _order(values, first="none") -> list:
    seen = list(dict.fromkeys(values))
    return ([first] if first in seen else []) + [v for v in seen if v != first]


AGGREGATES = ("mean", "median")  # a cell's centre (the CLI's --agg)
STATS = (*AGGREGATES, "std", "n")  # and its spread: the sample standard deviation, the number of runs


def paper_table(
    runs: pd.DataFrame, metrics=("acc", "asr"), rows: str = "attack", keep=(), agg: str = "mean"
) -> pd.DataFrame:
    """The `agg` (mean or median; `std`, the sample standard deviation, or `n`, the number of runs)
    over the runs of each cell (seeds, or scenarios such as the three trigger draws per pair of
    the ISPL paper, "Defending Against Backdoor Attacks Using Ensembles of Weak Learners", ICLR 2022
    submission, Sec. 5, which reports the median), in % (counts as counts), indexed by `rows`; columns
    (defense, metric name).

    Runs on different datasets, models or poison rates are never aggregated together: any of those
    that varies, and any key in `keep`, becomes an outer index level."""
    if runs.empty:
        raise ValueError("no results.json found")
    if agg not in STATS:
        raise ValueError(f"agg={agg!r} is unknown: use one of {', '.join(AGGREGATES)}")
    metrics = list(metrics)
    known = [c for c in runs.columns if c not in NOT_METRICS]
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
    long = groups.count() if agg == "n" else getattr(groups, agg)(numeric_only=True)
    if agg != "n":
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
    Columns: attack, defense, then metric columns in % (acc, asr, ...). The paper's setting, from
    a `# setting: dataset=cifar10 model=ResNet18 poison_rate=0.1 poison_rate.lc=0.25` comment
    line (a per-attack rate overrides the default; a `poison_rate` column sets it per row), is in
    `.attrs["setting"]` (empty without one) and `.attrs["name"]`."""
    path = Path(name_or_path)
    if not path.exists():
        path = REFERENCE_DIR / (name_or_path if name_or_path.endswith(".csv") else f"{name_or_path}.csv")
    if not path.exists():
        known = sorted(str(p.relative_to(REFERENCE_DIR).with_suffix("")) for p in REFERENCE_DIR.rglob("*.csv"))
        raise FileNotFoundError(f"no reference {name_or_path!r}: give a CSV path or one of {known}")
    ref = pd.read_csv(path, comment="#")
    lines = [line for line in path.read_text().splitlines() if line.startswith("# setting:")]
    pairs = lines[0].split(":", 1)[1].split() if lines else []
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise ValueError(f"{path}: its `# setting:` line takes key=value pairs, not {bad[0]!r}")
    ref.attrs = {"name": name_or_path, "setting": dict(p.split("=", 1) for p in pairs)}
    return ref


def reference_attack(name: str, attacks) -> str:
    """The reference row name of a run's attack: its name, or a preset's base name (`dbd/badnets`
    -> `badnets`) when only that is in the reference."""
    base = str(name).rsplit("/", 1)[-1]
    return name if name in set(attacks) or base not in set(attacks) else base


def setting_mismatches(runs: pd.DataFrame, reference: pd.DataFrame) -> list[str]:
    """How `runs` differ from the reference's setting (dataset, model, poison rate), e.g.
    `dataset digits (3 runs)`; [] when they match. Only runs of an attack the reference has are
    compared (the others get no published number)."""
    setting = reference.attrs.get("setting", {})
    attacks = set(reference["attack"])
    per_row = reference.groupby("attack")["poison_rate"].agg(set) if "poison_rate" in reference else None
    found: dict[str, int] = {}
    for _, run in runs.iterrows():
        attack = reference_attack(run["attack"], attacks)
        if attack not in attacks:
            continue
        for key in ("dataset", "model"):
            if key in setting and str(run[key]) != setting[key]:
                found[f"{key} {run[key]}"] = found.get(f"{key} {run[key]}", 0) + 1
        rates = (
            per_row.get(attack, set())
            if per_row is not None
            else {float(setting.get(f"poison_rate.{attack}", setting["poison_rate"]))}
            if "poison_rate" in setting
            else None
        )
        rate = run["poison_rate"]
        if rates is not None and not any(rate is not None and abs(float(rate) - r) < 1e-9 for r in rates):
            key = f"{attack} at poison_rate {rate}"
            found[key] = found.get(key, 0) + 1
    return [f"{k} ({n} run{'s' if n > 1 else ''})" for k, n in found.items()]


def describe_setting(reference: pd.DataFrame) -> str:
    """The reference's setting in words, e.g. `cifar10, ResNet18, poison_rate 0.1`."""
    s = reference.attrs.get("setting", {})
    parts = [s[k] for k in ("dataset", "model") if k in s]
    rates = [f"{k} {v}" for k, v in s.items() if k.startswith("poison_rate")]
    return ", ".join(parts + (rates or (["poison_rate per row"] if "poison_rate" in reference else [])))


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
    # the row key is the innermost level; a preset's runs match its base name's rows
    attacks = [reference_attack(a, reference["attack"]) for a in table.index.get_level_values(-1)]
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


def _ours(col: tuple) -> tuple | None:
    """(defense, metric) of a column holding our numbers; None for a paper or delta column."""
    return tuple(col[:2]) if len(col) == 2 or col[2] == "ours" else None


def with_spread(table: pd.DataFrame, std: pd.DataFrame, n: pd.DataFrame, centre: str = "mean") -> pd.DataFrame:
    """`table` with a `std` and an `n` column after each column of our numbers (for table.csv); a
    table without a reference names its numbers `centre` (the aggregate: mean or median)."""
    data = {}
    for col in table.columns:
        data[col] = table[col]
        key = _ours(col)
        if key is not None:
            data[(*key, "std")] = std[key].reindex(table.index)
            data[(*key, "n")] = n[key].reindex(table.index)
    cols = [c if len(c) == 3 else (*c, centre) for c in data]
    return pd.DataFrame(dict(zip(cols, data.values())), index=table.index).set_axis(
        pd.MultiIndex.from_tuples(cols), axis=1
    )


def _cell(value, std=None, n=None) -> str:
    if pd.isna(value):
        return "--"
    text = f"{value:.2f}"
    if n is not None and not pd.isna(n):
        text += (f" ± {std:.2f}" if not pd.isna(std) else "") + f" (n={int(n)})"
    return text


def formatted(table: pd.DataFrame, std: pd.DataFrame | None = None, n: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table as text: our cells `mean ± std (n=runs)` when `std` and `n` are given (no ± for
    a single run), the paper's numbers and deltas with two decimals, `--` where there is none."""
    out = {}
    for col in table.columns:
        key = _ours(col) if std is not None and n is not None else None
        out[" ".join(map(str, col))] = [
            _cell(v, std[key].get(i) if key else None, n[key].get(i) if key else None) for i, v in table[col].items()
        ]
    return pd.DataFrame(out, index=table.index).reset_index()  # index levels as columns: no tuple labels


def to_markdown(table: pd.DataFrame, std: pd.DataFrame | None = None, n: pd.DataFrame | None = None) -> str:
    return formatted(table, std, n).to_markdown(index=False, disable_numparse=True)


def cell_stats(
    runs: pd.DataFrame, metrics=("acc", "asr"), rows: str = "attack", keep=(), agg: str = "mean"
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(centre, std, n) of every cell: `paper_table` with `agg`, the sample standard deviation and
    the number of runs, the last two on the centre's rows and columns."""
    centre = paper_table(runs, metrics, rows=rows, keep=keep, agg=agg)
    std, n = (
        paper_table(runs, metrics, rows=rows, keep=keep, agg=s).reindex(index=centre.index, columns=centre.columns)
        for s in ("std", "n")
    )
    return centre, std, n
