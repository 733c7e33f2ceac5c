"""Point names (sweep folders), W&B run names and groups, and the `sweep.skip_done` check."""

import json

import pytest
from omegaconf import OmegaConf

from backdoor_bench.errors import ConfigError
from backdoor_bench.run_info import MAX_NAME, RunInfo, point_name
from backdoor_bench.sweep import done_before


def test_point_name_names_the_values_safely():
    overrides = ["attack=dst/badnets", "defense=ft", "paths.cache_dir=/tmp/c", "logger=wandb", "sweep.skip_done=true"]
    assert point_name(overrides) == "attack=dst-badnets,defense=ft"
    assert point_name(["attack.poison_rate=0.05"]) != point_name(["attack.poison_rate=0.1"])
    assert point_name(["attack.location=[1, 2]", "+x='a b'"]) == "attack.location=-1,-2-,+x=-a-b-"
    assert point_name(["cache.enabled=false"]) == point_name([]) == "default"


def test_a_long_point_name_is_cut_with_a_hash():
    common = [f"defense.k{i}={i}" for i in range(40)]
    a, b = point_name([*common, "seed=1"]), point_name([*common, "seed=2"])  # they differ past the cut
    assert len(a) == len(b) == MAX_NAME and a[:-9] == b[:-9] and a != b


def cfg(**kw):
    base = {"dataset": {"name": "digits"}, "attack": {"name": "badnets"}, "defense": {"name": "none"}, "seed": 0}
    return OmegaConf.create({**base, **kw})


def test_run_name_shows_every_override_and_the_full_preset_name():
    info = RunInfo(
        {"attack": "dst/badnets", "defense": "ft"},
        ("attack=dst/badnets", "defense=ft", "seed=1", "attack.poison_rate=0.05", "paths.root=/x"),
    )
    assert info.run_name(cfg(seed=1)) == "digits-dst/badnets-ft-s1 attack.poison_rate=0.05"
    assert RunInfo().run_name(cfg()) == "digits-badnets-none-s0"


def test_group_is_the_experiment_else_the_sweep():
    assert RunInfo({"experiment": "dbd/table1"}, (), "outputs/multirun/x").group == "dbd/table1"
    assert RunInfo({}, (), "outputs/multirun/x").group == "outputs/multirun/x"
    assert RunInfo().group is None


def done(tmp_path, config, **sweep):
    (tmp_path / "results.json").write_text(json.dumps({"config": config, "metrics": {"acc": 1.0}}))
    return done_before(cfg(sweep=sweep, paths={"root": "/new"}), tmp_path)


def test_skip_done_skips_only_the_same_config(tmp_path):
    same = {**OmegaConf.to_container(cfg()), "sweep": {"skip_done": False}, "paths": {"root": "/old"}}
    assert done(tmp_path, same, skip_done=True)  # where and how it was recorded does not matter
    assert not done(tmp_path, same, skip_done=False)  # the flag is off by default
    assert not done(tmp_path, {**same, "seed": 1}, skip_done=True)  # another config: run it again
    (tmp_path / "results.json").write_text("{cut sho")
    assert not done_before(cfg(sweep={"skip_done": True}), tmp_path)  # unreadable: run it again
    assert not done_before(cfg(sweep={"skip_done": True}), tmp_path / "none")  # nothing there yet
    with pytest.raises(ConfigError, match="sweep.skip_done='yes' is not true or false"):
        done_before(cfg(sweep={"skip_done": "yes"}), tmp_path)
