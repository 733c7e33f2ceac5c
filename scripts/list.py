#!/usr/bin/env python
"""List what the project offers: every attack, defense, dataset, model, trainer, ssl config,
experiment, logger and SD module config, with the one-line description its yaml file opens with.

    python scripts/list.py                     # every group
    python scripts/list.py attack defense      # some groups

Use a member as `group=member` (`python run.py attack=dbd/badnets`, `-m experiment=dbd/table1`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backdoor_bench.catalog import GROUPS, catalog  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("groups", nargs="*", help=f"config groups to list (default: all of {', '.join(GROUPS)})")
    a = p.parse_args(argv)
    unknown = [g for g in a.groups if g not in GROUPS]
    if unknown:
        print(f"error: no config group {', '.join(unknown)}: use some of {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    for group, entries in catalog(a.groups or GROUPS).items():
        width = max(len(m) for m, _ in entries)
        print(f"{group} ({len(entries)}):")
        for member, text in entries:
            print(f"  {member:<{width}}  {text}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
