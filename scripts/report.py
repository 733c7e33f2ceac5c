#!/usr/bin/env python
"""Turn runs into the paper's table.

    python scripts/report.py outputs/multirun/2026-11-21/12-00-00
    python scripts/report.py outputs/multirun/... --reference backdoorbench/cifar10_preactresnet18 --out report/

Prints rows attack, columns defense x {ACC, ASR} in % (mean over seeds and scenarios; `--agg
median` for their median, as the ISPL paper reports its three scenarios); with --reference, the
published numbers and ours-minus-paper beside ours. --out writes table.csv, table.tex, runs.csv
and a bar chart (bars.png).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backdoor_bench.report.table import (
    AGGREGATES,
    bar_chart,
    base_names,
    load_runs,
    paper_table,
    read_reference,
    to_markdown,
    with_reference,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="run or multirun directories (searched for results.json)")
    p.add_argument("--reference", help="published numbers: a CSV or a name under backdoor_bench/reference/")
    p.add_argument("--metrics", default="acc,asr", help="comma-separated metrics (default acc,asr)")
    p.add_argument("--rows", default="attack", help="row key: attack, dataset, model, poison_rate, ...")
    p.add_argument(
        "--agg",
        default="mean",
        choices=AGGREGATES,
        help="how runs of one cell (seeds, scenarios) are combined (default mean)",
    )
    p.add_argument("--out", help="folder for table.csv, table.tex, runs.csv, bars.png")
    a = p.parse_args(argv)
    try:
        runs, errors = load_runs(a.dirs, warn=lambda msg: print(f"warning: {msg}", file=sys.stderr))
        if runs.empty:
            raise ValueError(f"no readable results.json under {', '.join(a.dirs)}")
        reference = read_reference(a.reference) if a.reference else None
        # a reference given per poison rate is matched by rate, even when the runs share one rate
        keep = ("poison_rate",) if reference is not None and "poison_rate" in reference.columns else ()
        table = paper_table(runs, a.metrics.split(","), rows=a.rows, keep=keep, agg=a.agg)
        if reference is not None:
            table = with_reference(table, reference, base_names(runs))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{len(runs)} runs, datasets {sorted(runs['dataset'].dropna().unique())}, "
        f"models {sorted(runs['model'].dropna().unique())}; cells: {a.agg} over runs"
    )
    print(to_markdown(table))
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
        table.to_csv(out / "table.csv")
        (out / "table.tex").write_text(table.to_latex(float_format="%.2f", na_rep="--"))
        runs.to_csv(out / "runs.csv", index=False)
        bar_chart(table, out / "bars.png")
        print(f"wrote {out}/table.csv, table.tex, runs.csv, bars.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
