"""Reports: results.json files -> pandas -> the paper's table, with published numbers beside ours."""

from backdoor_bench.report.plots import bar_chart, line_plot
from backdoor_bench.report.table import (
    cell_stats,
    load_runs,
    paper_table,
    read_reference,
    setting_mismatches,
    with_reference,
)

__all__ = [
    "load_runs",
    "paper_table",
    "cell_stats",
    "read_reference",
    "setting_mismatches",
    "with_reference",
    "bar_chart",
    "line_plot",
]
