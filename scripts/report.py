#!/usr/bin/env python
"""Turn runs into the paper's table.

    python scripts/report.py outputs/multirun/2026-11-21/12-00-00
    python scripts/report.py outputs/multirun/... --reference backdoorbench/cifar10_preactresnet18 --out report/
    python scripts/report.py outputs/multirun/... --plot line --x attack.poison_rate --out report/

Prints rows attack, columns defense x {ACC, ASR} in %: each cell the mean over its runs (seeds,
scenarios; `--agg median` for their median, as the ISPL paper reports its three scenarios) ±
their standard deviation, with the number of runs n. A run found twice (the same folder, or the
same config and seed in two folders) counts once. With --reference, the published numbers and
ours-minus-paper beside ours; a reference whose setting (dataset, model, poison rate) differs from
the runs' is refused unless --force, and the output then says so. --out writes table.csv (with
std and n columns), table.tex, runs.csv and a figure: bars.png (--plot bar, the default) or
line.png (--plot line: each metric against the swept number --x, any dotted config key).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backdoor_bench.report.plots import bar_chart, line_plot
from backdoor_bench.report.table import (
    AGGREGATES,
    base_names,
    cell_stats,
    describe_setting,
    formatted,
    load_runs,
    read_reference,
    setting_mismatches,
    to_markdown,
    with_reference,
    with_spread,
)


def config_value(cfg: dict, key: str):
    """The value of a dotted config key (`attack.poison_rate`) in a run's config, or None."""
    for part in key.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return None
        cfg = cfg[part]
    return cfg


def swept_numbers(runs, key: str):
    """Column `key` of `runs`: every run's value of the dotted config key, each a number."""
    values = runs["config"].map(lambda c: config_value(c, key))
    bad = [(r, v) for r, v in zip(runs["run"], values) if isinstance(v, bool) or not isinstance(v, int | float)]
    if bad:
        raise ValueError(f"--x {key} is not a number in every run ({bad[0][0]}: {bad[0][1]!r}): give a swept number")
    return values.astype(float)


def reference_note(runs, reference, force: bool) -> str | None:
    """None when the runs match the reference's setting; with --force, the note the output
    carries; else a ValueError naming what differs."""
    differs = setting_mismatches(runs, reference)
    if not differs:
        return None
    what = f"--reference {reference.attrs['name']} is for {describe_setting(reference)}; these runs differ: "
    if not force:
        raise ValueError(what + "; ".join(differs) + ": compare like with like, or pass --force")
    return "--force: " + what + "; ".join(differs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="run or multirun directories (searched for results.json)")
    p.add_argument("--reference", help="published numbers: a CSV or a name under backdoor_bench/reference/")
    p.add_argument("--force", action="store_true", help="set the reference beside runs of another setting")
    p.add_argument("--metrics", default="acc,asr", help="comma-separated metrics (default acc,asr)")
    p.add_argument("--rows", default="attack", help="row key: attack, dataset, model, poison_rate, ...")
    p.add_argument(
        "--agg",
        default="mean",
        choices=AGGREGATES,
        help="how runs of one cell (seeds, scenarios) are combined (default mean)",
    )
    p.add_argument("--plot", default="bar", choices=("bar", "line"), help="the figure --out writes (default bar)")
    p.add_argument("--x", default="attack.poison_rate", help="--plot line: the swept config key on the x axis")
    p.add_argument("--out", help="folder for table.csv, table.tex, runs.csv and bars.png or line.png")
    a = p.parse_args(argv)
    warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)  # noqa: E731
    try:
        runs, errors = load_runs(a.dirs, warn=warn)
        if runs.empty:
            raise ValueError(f"no readable results.json under {', '.join(a.dirs)}")
        metrics = a.metrics.split(",")
        reference = read_reference(a.reference) if a.reference else None
        note = reference_note(runs, reference, a.force) if reference is not None else None
        # a reference given per poison rate is matched by rate, even when the runs share one rate
        keep = ("poison_rate",) if reference is not None and "poison_rate" in reference.columns else ()
        table, std, n = cell_stats(runs, metrics, rows=a.rows, keep=keep, agg=a.agg)
        if reference is not None:
            table = with_reference(table, reference, base_names(runs))
        if a.plot == "line":
            runs[a.x] = swept_numbers(runs, a.x)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{len(runs)} runs, datasets {sorted(runs['dataset'].dropna().unique())}, "
        f"models {sorted(runs['model'].dropna().unique())}; cells: {a.agg} over runs ± their std (n = runs)"
    )
    if note:
        print(f"note: {note}")
    print(to_markdown(table, std, n))
    if "warnings" in runs and runs["warnings"].sum():
        flagged = runs[runs["warnings"] > 0]["run"].tolist()
        print(
            f"\n{len(flagged)} runs finished with warnings (see `warnings` in their results.json): {', '.join(flagged)}"
        )
    if not errors.empty:
        print(f"\n{len(errors)} failed sweep points:")
        for _, e in errors.iterrows():
            print(f"  {e['run']}: {e['error']}")
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        with_spread(table, std, n, a.agg).to_csv(out / "table.csv")
        (out / "table.tex").write_text(formatted(table, std, n).to_latex(index=False))
        runs.drop(columns="config").to_csv(out / "runs.csv", index=False)
        short = "reference from another setting (--force)" if note else None
        if a.plot == "line":
            figure = line_plot(runs, metrics, a.x, out / "line.png", reference=reference, note=short)
        else:
            figure = bar_chart(table, out / "bars.png", std=std, note=short)
        print(f"wrote {out}/table.csv, table.tex, runs.csv, {figure.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
