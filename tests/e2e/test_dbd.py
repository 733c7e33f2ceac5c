"""DBD end to end through run.py at trainer=tiny: every variant, every loss, every dbd experiment."""

import json

import pytest

from tests.conftest import report_table, run_table


def results(path):
    return json.loads(path.read_text())


def test_dbd_runs_and_reports_its_labeled_set(run_cli):
    p = run_cli("defense=dbd", "trainer=tiny")
    r = results(p.out_dir / "results.json")
    d = r["detection"]
    assert d["n_removed"] == 128 and d["n_relabeled"] == 0  # epsilon 0.5 of 256 samples stays labeled
    assert 0 <= d["kept_poison_rate"] <= 1 and d["tp"] + d["fn"] == r["data"]["n_poisoned"]
    assert {"train/ssl", "train/dbd_warmup", "train/dbd_mixmatch"} <= set(r["timing"])
    assert (p.out_dir / "score_histogram.png").stat().st_size > 1000
    shares = r["defense_extra"].pop("labeled_share_per_class")
    assert r["defense_extra"] == {
        "variant": "full",
        "loss": "sce",
        "warmup_epochs": 2,
        "finetune_epochs": 2,
        "iterations": 2,
    }
    assert len(shares) == 10 and all(0 <= s <= 1 for s in shares)  # the labeled share of every given class
    # a second defense on the same poisoned set reuses the SSL backbone
    again = run_cli("defense=dbd", "trainer=tiny", "defense.variant=ss_sce")
    assert "cache: reused ssl_backbone" in (again.out_dir / "run.log").read_text()


def check_variant(r: dict) -> None:
    """A DBD run's extra matches its variant: ss_ce warms up with CE whatever `defense.loss`; full and
    no_ssl fine-tune with MixMatch, ss_sce_tune tunes the head; epsilon 0.5 of 256 stays labeled."""
    extra = r["defense_extra"]
    assert extra["loss"] == ("ce" if extra["variant"] == "ss_ce" else r["config"]["defense"]["loss"])
    assert ("finetune_epochs" in extra) == (extra["variant"] in ("full", "no_ssl"))
    assert ("tune_epochs" in extra) == (extra["variant"] == "ss_sce_tune")
    assert r["detection"]["n_removed"] == 128


def test_every_loss_runs(run_cli):
    """The warm-up losses other than SCE (dbd/table3's slice runs every variant with SCE), on the
    two variants whose later stage trains with the warm-up loss or after it."""
    p = run_cli(
        "defense=dbd", "trainer=tiny", "defense.variant=no_ssl,ss_sce_tune", "defense.loss=apl,gce", multirun=True
    )
    runs = [results(f) for f in sorted(p.out_dir.rglob("results.json"))]
    got = {(r["defense_extra"]["variant"], r["config"]["defense"]["loss"]) for r in runs}
    assert got == {(v, loss) for v in ("no_ssl", "ss_sce_tune") for loss in ("apl", "gce")}
    for r in runs:
        check_variant(r)
        assert r["metrics"]["acc"] is not None


# dbd/table1 runs in test_paper_baselines.py (its first attack against every defense); table3's
# slice: every variant against one attack (every point of both validates there too)
SLICES = {"table2": {}, "table3": {"attack": "dbd/wanet"}, "cpu": {}}


@pytest.mark.parametrize("experiment", list(SLICES))
def test_dbd_experiment_runs_at_tiny_scale(tmp_path, experiment):
    """Each dbd table (a slice of it) as a sweep on digits with the tiny trainer, then its report
    beside the paper."""
    p = run_table(tmp_path / "multirun", tmp_path / "cache", f"dbd/{experiment}", **SLICES[experiment])
    if experiment == "cpu":
        return
    reference = ["--reference", f"dbd/{experiment}", "--force", "--metrics", "acc,asr,kept_poison_rate"]
    rep = report_table(p.out_dir, *reference, "--out", str(tmp_path / "rep"))
    assert "paper" in rep and "dbd" in rep
    if experiment == "table3":
        assert "dbd[no_ssl]" in rep and "dbd[ss_sce_tune]" in rep
        assert {r["defense_extra"]["variant"] for r in p.results} == {
            "full",
            "no_ssl",
            "ss_ce",
            "ss_sce",
            "ss_sce_tune",
        }
        for r in p.results:
            check_variant(r)
