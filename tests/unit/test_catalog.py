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
