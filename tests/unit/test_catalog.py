"""scripts/list.py: every config member with the one-line description its yaml opens with."""

import pytest

from backdoor_bench.catalog import GROUPS, description
from scripts.list import main as list_main
from tests.conftest import CONF, group_members


def test_every_config_member_is_listed_with_a_description(capsys):
    assert list_main([]) == 0
    out = capsys.readouterr().out
    listed = {}
    group = None
    for line in out.splitlines():
        if line and not line.startswith(" "):
            group = line.split(" ")[0]
        elif line.strip():
            member, _, text = line.strip().partition("  ")
            listed[(group, member)] = text.strip()
    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir())
    assert sorted(GROUPS) == groups  # no config group left out of the list
    expected = {(g, m) for g in groups for m in group_members(g)}
    assert set(listed) == expected
    assert all(listed.values()), [k for k, v in listed.items() if not v]


def test_description_is_the_first_sentence_of_the_opening_comment(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text(
        "# @package _global_\n# BadNets (Gu et al. 2017, App. B) as a\n# test. More text.\n#   python run.py\nname: x\n"
    )
    assert description(f) == "BadNets (Gu et al. 2017, App. B) as a test"
    f.write_text("name: x\n# a later comment\n")
    assert description(f) == ""


@pytest.mark.parametrize("args", [["nosuch"], ["attack", "defence"]])
def test_unknown_group_is_one_line_exit_2(args, capsys):
    assert list_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no config group")


def test_readme_names_every_config_member_and_script():
    """The README's config table names every member of conf/ (as `member` in its group's row), and
    its layout every script."""
    import re

    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Config groups") : readme.index("### Attacks")]
    rows = {m.group(1): line for line in table.splitlines() if (m := re.match(r"\| `(\w+)` \|", line))}
    missing = {g: [m for m in group_members(g) if f"`{m}`" not in rows.get(g, "")] for g in GROUPS}
    assert not any(missing.values()), missing
    layout = readme[readme.index("## Layout") :]
    scripts = [p.name for p in (ROOT / "scripts").glob("*.py") if p.name != "__init__.py"]
    assert [s for s in scripts if s not in layout] == []
