import torch
from omegaconf import OmegaConf

from backdoor_bench.models import ImageClassifier
from backdoor_bench.models.small_cnn import SmallCNN
from backdoor_bench.training.fit import fit, predict, training_spec
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
    Counting.steps = 0
    fit(Counting(model, opt, 3), x, y, t, max_epochs=3, checkpoint=ckpt)
    assert Counting.steps == 8
    assert (predict(model, x, device="cpu") == y).float().mean() == 1.0
