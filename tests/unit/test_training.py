import torch
from omegaconf import OmegaConf

from backdoor_bench.models import ImageClassifier
from backdoor_bench.models.small_cnn import SmallCNN
from backdoor_bench.training import fit as fit_module
from backdoor_bench.training.fit import _SaveEachEpoch, fit, predict, training_spec
from backdoor_bench.training.losses import cross_entropy
from backdoor_bench.training.supervised import Supervised
from tests.conftest import CONF


def tcfg():
    t = OmegaConf.load(CONF / "trainer/tiny.yaml")
    base = OmegaConf.load(CONF / "trainer/default.yaml")
    t = OmegaConf.merge(base, {k: v for k, v in t.items() if k != "defaults"})
    t.batch_size = 8
    return t


class Counting(Supervised):
    steps = 0

    def training_step(self, batch, i):
        type(self).steps += 1
        return super().training_step(batch, i)


def test_cross_entropy_exact():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    y = torch.tensor([0, 1])
    per = cross_entropy(logits, y, reduction="none")
    assert torch.allclose(per, torch.tensor([0.693147, 2.126928]), atol=1e-5)


def test_training_spec_ignores_execution_keys():
    t = tcfg()
    a = training_spec(t)
    t.progress_bar, t.accelerator = True, "auto"
    assert training_spec(t) == a
    t.max_epochs = 7
    assert training_spec(t) != a


def test_fit_learns_and_resumes_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    x = torch.zeros(32, 1, 8, 8, dtype=torch.uint8)
    y = torch.arange(32) % 2
    x[y == 1] = 255  # trivially separable
    model = ImageClassifier(SmallCNN(2, 1, 4), (0.5,), (0.5,))
    ckpt = tmp_path / "partial.ckpt"
    t = tcfg()
    opt = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": "constant"}
    Counting.steps = 0
    fit(Counting(model, opt, 1), x, y, t, max_epochs=1, checkpoint=ckpt)
    assert ckpt.exists() and Counting.steps == 4
    # an "interrupted" 3-epoch run: resuming skips the finished epoch
    Counting.steps, resumed = 0, []
    fit(Counting(model, opt, 3), x, y, t, max_epochs=3, checkpoint=ckpt, on_resume=resumed.append)
    assert Counting.steps == 8
    assert resumed == [{"checkpoint": str(ckpt), "epochs_done": 1}]  # what results.json records
    assert (predict(model, x, device="cpu") == y).float().mean() == 1.0


def test_checkpoints_only_after_the_last_epoch_with_a_long_interval_and_every_epoch_with_0(tmp_path, monkeypatch):
    written = []
    write = fit_module.atomic_write

    def spy(path, fn):
        write(path, fn)
        written.append(torch.load(path, map_location="cpu", weights_only=False)["epoch"])

    monkeypatch.setattr(fit_module, "atomic_write", spy)
    x, y = torch.zeros(16, 1, 8, 8, dtype=torch.uint8), torch.arange(16) % 2
    opt = {"name": "sgd", "lr": 0.1, "schedule": "constant"}
    t = tcfg()
    assert t.checkpoint_every_s == 60  # the default
    for every, epochs in ((3600, [2]), (0, [0, 1, 2])):
        written.clear()
        t.checkpoint_every_s = every
        model = ImageClassifier(SmallCNN(2, 1, 4), (0.5,), (0.5,))
        fit(Supervised(model, opt, 3), x, y, t, max_epochs=3, checkpoint=tmp_path / f"{every}.ckpt")
        assert written == epochs
    assert "checkpoint_every_s" not in training_spec(t)  # the cache keys do not change with it


def test_checkpoint_interval_counts_from_the_last_write(monkeypatch):
    monkeypatch.setattr(fit_module, "atomic_write", lambda path, fn: saved.append(trainer.current_epoch))
    saved, now = [], [0.0]

    class Trainer:
        should_stop, max_epochs, current_epoch = False, 8, 0

    trainer = Trainer()
    cb = _SaveEachEpoch("unused.ckpt", 60, clock=lambda: now[0])
    cb.on_train_start(trainer, None)
    for epoch in range(8):  # 25 s an epoch
        now[0] += 25
        trainer.current_epoch = epoch
        cb.on_train_epoch_end(trainer, None)
    assert saved == [2, 5, 7]  # at 75 s, 150 s, and the last epoch


def test_stage_length_floor_in_steps_and_caps():
    from omegaconf import OmegaConf

    from backdoor_bench.training.fit import stage_length, steps_per_epoch

    free = OmegaConf.create({"max_stage_epochs": None})
    assert steps_per_epoch(1438, 128) == 12 and steps_per_epoch(1438, 512, drop_last=True) == 2
    assert steps_per_epoch(10, 128) == 1 and steps_per_epoch(10, 128, drop_last=True) == 1
    # the paper's 10 epochs of 391 steps already exceed a 600-step floor: unchanged
    assert stage_length(free, 10, min_steps=600, steps_per_epoch=391) == 10
    # 10 epochs of 12 steps are 120: the floor asks for ceil(600 / 12) = 50 epochs
    assert stage_length(free, 10, min_steps=600, steps_per_epoch=12) == 50
    assert stage_length(free, 10, min_steps=601, steps_per_epoch=12) == 51
    assert stage_length(free, 10, min_steps=0, steps_per_epoch=12) == 10
    # trainer=tiny's cap wins over the floor; steps per epoch ignore it
    assert stage_length(OmegaConf.create({"max_stage_epochs": 2}), 10, min_steps=600, steps_per_epoch=12) == 2
    assert stage_length(OmegaConf.create({"max_stage_steps": 2}), 120, "steps", min_steps=600) == 2
