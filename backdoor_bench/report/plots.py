"""Report figures: grouped bars per table row, and a metric against a swept number (a line per
attack and defense), each with error bars (one standard deviation over the runs of a point) and
the published numbers as black markers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from backdoor_bench.report.table import COUNTS, METRIC_NAMES, reference_attack


def row_label(index_value, names) -> str:
    """A readable bar-group label: the row key first, then the other levels as `name value`
    (`badnets, poison_rate 0.05`), never a tuple."""
    values = index_value if isinstance(index_value, tuple) else (index_value,)
    names = list(names) if len(names) == len(values) else [None] * len(values)
    *outer, inner = zip(names, values)
    return ", ".join([str(inner[1]), *(f"{n} {v}" if n else str(v) for n, v in outer)])


def _title(metrics: list[str], what: str, note: str | None) -> str:
    return f"{', '.join(metrics)} {what}" + (f"\n{note}" if note else "")


def bar_chart(table: pd.DataFrame, path: str | Path, std: pd.DataFrame | None = None, note: str | None = None) -> Path:
    """Grouped bars: one group per table row, one bar per (defense, metric) of our numbers, error
    bars from `std`, the paper's numbers (a `paper` column of `with_reference`) as black diamonds;
    the title names the metrics plotted and adds `note` (e.g. a --force warning)."""
    import matplotlib.pyplot as plt

    from backdoor_bench.figures import save_figure

    ours = [c for c in table.columns if len(c) == 2 or c[2] == "ours"]
    groups = [row_label(i, table.index.names) for i in table.index]
    width = 0.8 / max(1, len(ours))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(groups) * len(ours) + 2), 4.5))
    x = np.arange(len(groups))
    has_paper = False
    for k, col in enumerate(ours):
        key = tuple(col[:2])
        pos = x - 0.4 + width * (k + 0.5)
        err = std[key].to_numpy(dtype=float) if std is not None and key in std else None
        ax.bar(pos, table[col].to_numpy(dtype=float), width, yerr=err, capsize=2, label=" ".join(key))
        if len(col) == 3 and (*key, "paper") in table:
            paper = table[(*key, "paper")].to_numpy(dtype=float)
            ax.scatter(pos, paper, marker="D", s=18, color="black", zorder=3, label="paper" if not has_paper else None)
            has_paper = has_paper or bool(np.isfinite(paper).any())
    metrics = list(dict.fromkeys(c[1] for c in ours))
    ax.set_xticks(x, groups, rotation=20 if max(map(len, groups), default=0) > 12 else 0, ha="right")
    if not any(m.lower() in COUNTS for m in metrics):
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(_title(metrics, f"per {table.index.names[-1] or 'row'} and defense", note), fontsize=10)
    return save_figure(fig, path)


def line_plot(
    runs: pd.DataFrame,
    metrics: list[str],
    x: str,
    path: str | Path,
    reference: pd.DataFrame | None = None,
    note: str | None = None,
) -> Path:
    """One panel per metric: the metric (mean over the runs of a point, in %; counts as counts)
    against the number in column `x`, a line per attack and defense (and dataset and model where
    they vary) with one-standard-deviation error bars; the reference's numbers as black crosses
    at their poison rate (per row, or its setting's) when `x` is the poison rate."""
    import matplotlib.pyplot as plt

    from backdoor_bench.figures import save_figure

    lines = ["attack", "defense", *(k for k in ("dataset", "model") if runs[k].nunique(dropna=False) > 1)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        scale = 1 if metric in COUNTS else 100
        points = runs.groupby([*lines, x], sort=True)[metric].agg(["mean", "std", "count"]).reset_index()
        for key, line in points.groupby(lines, sort=False):
            label = " ".join(map(str, key))
            bar = ax.errorbar(
                line[x], line["mean"] * scale, yerr=line["std"].fillna(0) * scale, marker="o", capsize=3, label=label
            )
            published = _reference_points(reference, key[0], key[1], metric, x)
            if published is not None and len(published):
                color = bar.lines[0].get_color()
                ax.scatter(
                    published.index, published, marker="X", s=50, color=color, zorder=3, label=f"{label} (paper)"
                )
        ax.set_xlabel(x)
        ax.set_ylabel(METRIC_NAMES.get(metric, metric) + ("" if metric in COUNTS else " (%)"))
        ax.set_title(METRIC_NAMES.get(metric, metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    names = [METRIC_NAMES.get(m, m) for m in metrics]
    fig.suptitle(_title(names, f"against {x} (mean ± std over runs)", note), fontsize=10)
    return save_figure(fig, path)


def _reference_points(reference, attack, defense, metric, x) -> pd.Series | None:
    """The published `metric` of (attack, defense) indexed by poison rate, when `x` is the rate."""
    if reference is None or metric not in reference or x.rsplit(".", 1)[-1] != "poison_rate":
        return None
    rows = reference[
        (reference["attack"] == reference_attack(attack, reference["attack"])) & (reference["defense"] == defense)
    ]
    if rows.empty:
        return None
    if "poison_rate" in rows:
        return rows.set_index("poison_rate")[metric].dropna()
    setting = reference.attrs.get("setting", {})
    rate = setting.get(f"poison_rate.{rows['attack'].iloc[0]}", setting.get("poison_rate"))
    return pd.Series([rows[metric].iloc[0]], index=[float(rate)]).dropna() if rate is not None else None
