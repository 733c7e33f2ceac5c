"""Bad input stops the run before any training, with one message naming the key and no traceback."""

import pytest

CASES = [
    (["attack.poison_rate=1.5"], "poison_rate"),
    (["attack.target=12"], "attack.target"),
    (["attack.size=20"], "attack.size"),
    (["attack.pattern=triangle"], "attack.pattern"),
    (["dataset=image_folder", "dataset.root=/no/such/folder"], "dataset.root"),
    (["dataset=cifar10", "dataset.root=/no/such/folder", "dataset.download=false"], "dataset.root"),
    (["dataset=image_folder"], "dataset.root is not set"),
    (["dataset=image_folder", "dataset.root=tests"], "no 'train' folder"),
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["trainer.precision=8-bit"], "trainer.precision"),
    (["trainer.optimizer.name=lion"], "trainer.optimizer.name"),
    (["defense=dbr", "defense.sd.metric=loss"], "defense.sd.metric"),
    (["defense=dst", "defense.sd.clean_ratio=0.99"], "defense.sd.clean_ratio"),
    (["attack.pattern=grid", "attack.size=4"], "attack.pattern=grid"),
]


@pytest.mark.parametrize("overrides,key", CASES, ids=[c[1] + ":" + c[0][-1] for c in CASES])
def test_bad_config_fails_fast(run_cli, overrides, key):
    p = run_cli(*overrides, check=False)
    assert p.returncode == 2, p.stderr[-2000:]
    assert key in p.stderr and "Traceback" not in p.stderr + p.stdout
    assert "stage: defense" not in p.stdout + p.stderr
    assert not (p.out_dir / "results.json").exists()


def test_unknown_config_option_is_named(run_cli):
    p = run_cli("attack=no_such_attack", check=False)
    assert p.returncode != 0
    assert "attack" in p.stderr and "no_such_attack" in p.stderr and "Traceback" not in p.stderr
