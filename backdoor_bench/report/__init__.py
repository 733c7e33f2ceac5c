"""Reports: results.json files -> pandas -> the paper's table, with published numbers beside ours."""

from backdoor_bench.report.table import (
    bar_chart,
    load_runs,
    paper_table,
    read_reference,
    with_reference,
)

__all__ = ["load_runs", "paper_table", "read_reference", "with_reference", "bar_chart"]
