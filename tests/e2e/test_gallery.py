"""scripts/gallery.py: every attack on one sheet."""

import subprocess
import sys

import pytest

from scripts import gallery
from tests.conftest import ROOT, children_cpu_s, group_members


def test_gallery_sheet_rows(tmp_path, capsys):
    out = tmp_path / "sheet.png"
    rc = gallery.main(
        [
            "trainer=tiny",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "--attacks",
            "badnets,dst/sig,adap_patch,dirty_label",
            "--out",
            str(out),
            "--n",
            "3",
        ]
    )
    assert rc == 0 and out.stat().st_size > 5000
    # badnets, dirty_label: one row each; dst/sig and adap_patch: a test row too (stronger delta, other patches)
    assert "gallery: 6 rows (4 attacks)" in capsys.readouterr().out


def test_gallery_rejects_a_bad_attack_value(tmp_path, capsys):
    rc = gallery.main(["attack.poison_rate=2", "--attacks", "badnets", "--out", str(tmp_path / "x.png")])
    assert rc == 2 and "attack.poison_rate" in capsys.readouterr().err
    # overrides after the options are overrides too (the same one-line config error, not a usage error)
    rc = gallery.main(
        ["--attacks", "badnets", "--out", str(tmp_path / "x.png"), "trainer=tiny", "attack.poison_rate=2"]
    )
    assert rc == 2 and "attack.poison_rate" in capsys.readouterr().err


@pytest.mark.slow
def test_the_whole_gallery_at_tiny_scale_is_quick(tmp_path):
    """`scripts/gallery.py trainer=tiny` (every attack; the trained ones under the stage caps) in
    under 3 CPU minutes (measured: 19 CPU s), overrides after the options."""
    before = children_cpu_s()
    out = tmp_path / "sheet.png"
    cmd = [sys.executable, str(ROOT / "scripts" / "gallery.py"), "--out", str(out), "trainer=tiny"]
    p = subprocess.run([*cmd, f"paths.cache_dir={tmp_path}/cache"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    every = [m for m in group_members("attack") if "/" not in m and m != "none"]
    assert f"({len(every)} attacks)" in p.stdout and out.stat().st_size > 5000
    assert children_cpu_s() - before < 180
