"""What the project offers: every member of each config group with the one-line description its
yaml file opens with (the first sentence of its leading comment)."""

from __future__ import annotations

import re
from pathlib import Path

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("attack", "defense", "dataset", "model", "trainer", "ssl", "experiment", "logger", "sd")
MAX_CHARS = 150
# a sentence ends at ". " before a capital, not after an abbreviation ("et al.", "App.", "e.g.")
SENTENCE_END = re.compile(r"(?<!\bal)(?<!\bApp)(?<!\bSec)(?<!\bFig)(?<!\bEq)(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z(\"])")


def members(group: str, conf: Path = CONF) -> list[str]:
    """Every option of `group`, presets in subfolders included (e.g. `dbd/badnets`)."""
    return sorted(str(p.relative_to(conf / group).with_suffix("")) for p in (conf / group).rglob("*.yaml"))


def description(path: Path) -> str:
    """The first sentence of the comment block a config file opens with ('' when it has none); the
    block ends at a blank comment line or an indented one (a command example)."""
    lines = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:]
        if text.strip().startswith("@package"):
            continue
        if not text.strip() or text.startswith("  "):
            break
        lines.append(text.strip())
    block = " ".join(lines).strip()
    first = SENTENCE_END.split(block, maxsplit=1)[0].rstrip(":")
    first = first.rstrip(".")
    return first if len(first) <= MAX_CHARS else first[: MAX_CHARS - 3].rstrip() + "..."


def catalog(groups=GROUPS, conf: Path = CONF) -> dict[str, list[tuple[str, str]]]:
    """{group: [(member, description)]} for `groups`."""
    return {g: [(m, description(conf / g / f"{m}.yaml")) for m in members(g, conf)] for g in groups}
