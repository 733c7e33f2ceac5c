"""The GPU path's CPU-testable parts: sync-free losses and MixMatch give the old values, trainer
options (compile, drop_last, lr scaling, progress bar, fused optimizers) and their cache keys,
scoring passes, trainer=gpu_fast with every experiment. CUDA-only checks skip without a GPU."""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from backdoor_bench.data.loader import DeviceLoader
from backdoor_bench.errors import ConfigError
from backdoor_bench.models import ImageClassifier
from backdoor_bench.models.small_cnn import SmallCNN
from backdoor_bench.training.fit import (
    compile_enabled,
    compiled,
    make_trainer,
    over_batches,
    predict,
    score_batch,
    training_spec,
)
from backdoor_bench.training.flows import fit_flow, make_flow
from backdoor_bench.training.losses import centroid_separation, mixed_cross_entropy, nt_xent
from backdoor_bench.training.mixmatch import beta_sample, mixup
from backdoor_bench.training.optim import configure_optimizers, run_optimizer
from backdoor_bench.training.supervised import Supervised
from tests.conftest import CONF

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# -- the old implementations, kept as references --------------------------------------------------
def old_nt_xent(u, v, temperature=0.5, symmetric=False):
    z = F.normalize(torch.cat([u, v]).float(), dim=1)
    b = len(u)
    sim = (z @ z.T / temperature).masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
    losses = F.cross_entropy(sim, torch.cat([torch.arange(b, 2 * b), torch.arange(b)]), reduction="none")
    return losses.mean() if symmetric else losses[:b].mean()


def old_centroid_separation(f, y):
    mu = F.normalize(torch.stack([f[y == c].float().mean(0) for c in y.unique()]), dim=1)
    s = mu @ mu.T
    return (s - torch.diag(torch.diag(s))).mean()


def old_mixed_cross_entropy(logits, y, poisoned, lambda_p=0.001):
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    p = poisoned.bool()
    clean = ce[~p].mean() if (~p).any() else ce.sum() * 0
    poison = ce[p].mean() if p.any() else ce.sum() * 0
    return clean - lambda_p * poison


def old_mix(x, t, alpha):
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(len(x))
    return lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm]


def old_fit_flow(flow, z, epochs, batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3, betas=(0.9, 0.99))
    history = []
    for _ in range(epochs):
        order, total = torch.randperm(len(z), generator=g), 0.0
        for i in range(0, len(z), batch_size):
            nll = -flow().log_prob(z[order[i : i + batch_size]]).mean()
            opt.zero_grad()
            nll.backward()
            opt.step()
            total += float(nll.detach()) * len(order[i : i + batch_size])
        history.append(total / len(z))
    return history


# -- no host syncs: the same values ---------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [False, True])
def test_nt_xent_positives_on_device_give_the_old_value(symmetric):
    torch.manual_seed(0)
    u, v = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.equal(nt_xent(u, v, 0.5, symmetric), old_nt_xent(u, v, 0.5, symmetric))


@pytest.mark.parametrize("y", [[0, 0, 1, 2, 2, 2], [3, 3, 3, 3, 3, 3], [0, 5, 1, 5, 0, 9]])
def test_centroid_separation_without_sync_gives_the_old_value(y):
    torch.manual_seed(1)
    f, y = torch.randn(6, 4, requires_grad=True), torch.tensor(y)
    new, old = centroid_separation(f, y), old_centroid_separation(f, y)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-7)
    (g_new,), (g_old,) = torch.autograd.grad(new, f), torch.autograd.grad(old, f)
    torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-7)


def test_centroid_separation_exact_on_orthogonal_centroids():
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 2])  # centroids (2,0), (0,2), (1,1): cosines 0, 1/sqrt2, 1/sqrt2, each twice; / 9
    assert centroid_separation(f, y).item() == pytest.approx(4 / math.sqrt(2) / 9, abs=1e-7)


@pytest.mark.parametrize("poisoned", [[1, 0, 0, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
def test_mixed_cross_entropy_without_sync_gives_the_old_value(poisoned):
    torch.manual_seed(2)
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    p = torch.tensor(poisoned, dtype=torch.bool)
    torch.testing.assert_close(mixed_cross_entropy(logits, y, p, 0.5), old_mixed_cross_entropy(logits, y, p, 0.5))


def test_mixmatch_beta_on_device_gives_the_old_draws_and_mixes():
    x, t = torch.randn(6, 3, 2, 2), torch.softmax(torch.randn(6, 4), 1)
    for seed in range(5):
        torch.manual_seed(seed)
        old = old_mix(x, t, 0.75)
        torch.manual_seed(seed)
        lam = beta_sample(0.75, x.device)
        new = mixup(x, t, lam, torch.randperm(len(x)))
        assert lam.device == x.device and lam.ndim == 0
        assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])


def test_beta_sample_is_the_beta_distribution():
    torch.manual_seed(0)
    draws = torch.stack([beta_sample(0.75, "cpu") for _ in range(4000)])
    assert draws.mean().item() == pytest.approx(0.5, abs=0.02)
    assert draws.var().item() == pytest.approx(0.25 / 2.5, abs=0.01)  # a^2 / ((2a)^2 (2a + 1)) at a = b


def test_fit_flow_sums_on_device_with_the_old_history():
    z = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    old = old_fit_flow(make_flow(2, hidden=8), z, epochs=2, batch_size=4, seed=5)
    torch.manual_seed(3)
    assert fit_flow(make_flow(2, hidden=8), z, epochs=2, batch_size=4, seed=5) == old


# -- trainer options ------------------------------------------------------------------------------
def trainer_cfg(name="default", **over):
    cfg = OmegaConf.merge(
        OmegaConf.load(CONF / "trainer" / "default.yaml"), OmegaConf.load(CONF / "trainer" / f"{name}.yaml")
    )
    cfg.pop("defaults", None)
    return OmegaConf.merge(cfg, over)


def test_new_trainer_options_leave_the_cpu_cache_keys_as_they_were():
    spec = training_spec(trainer_cfg())
    assert set(spec) == {
        "batch_size",
        "channels_last",
        "deterministic",
        "max_epochs",
        "optimizer",
        "precision",
        "train_subset",
    }
    assert "drop_last" in training_spec(trainer_cfg(drop_last=True))
    assert training_spec(trainer_cfg(lr_batch_size=128))["lr_batch_size"] == 128
    assert training_spec(trainer_cfg(compile=True, compile_mode="max-autotune", progress_bar_refresh=1)) == spec


def test_gpu_trainers_drop_the_last_batch_cpu_ones_do_not():
    assert trainer_cfg("gpu").drop_last and not trainer_cfg("cpu").drop_last and not trainer_cfg("tiny").drop_last


def test_drop_last_keeps_a_lone_partial_batch():
    x, y = torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10)
    assert [len(b["y"]) for b in DeviceLoader(x, y, 4, drop_last=True)] == [4, 4]
    assert [len(b["y"]) for b in DeviceLoader(x, y, 4)] == [4, 4, 2]
    assert [len(b["y"]) for b in DeviceLoader(x[:3], y[:3], 4, drop_last=True)] == [3]


def test_linear_lr_scaling_with_warmup_from_the_unscaled_lr():
    t = trainer_cfg("gpu_fast")
    assert (t.batch_size, t.lr_batch_size) == (512, 128)
    o = run_optimizer(t)
    assert o["lr"] == pytest.approx(0.04) and o["warmup_from"] == 0.01 and o["warmup_epochs"] == 5
    assert run_optimizer(t, batch_size=256)["lr"] == pytest.approx(0.02)
    plain = run_optimizer(trainer_cfg())
    assert plain == OmegaConf.to_container(trainer_cfg().optimizer) and "warmup_from" not in plain


def test_compile_auto_is_on_cuda_only_and_leaves_the_model_eager_afterwards():
    assert compile_enabled(trainer_cfg(), torch.device("cuda")) and not compile_enabled(
        trainer_cfg(), torch.device("cpu")
    )
    assert compile_enabled(trainer_cfg(compile=True), torch.device("cpu"))
    assert not compile_enabled(trainer_cfg(compile=False), torch.device("cuda"))
    model = ImageClassifier(SmallCNN(num_classes=3, in_channels=1), (0.5,), (0.5,))
    module = Supervised(model, {"lr": 0.1}, 1)
    names = set(model.state_dict())
    with compiled(module, trainer_cfg(compile=True), torch.device("cpu")):  # compiles lazily: no forward here
        parts = [m for m in model.backbone.children() if m._compiled_call_impl is not None]
        assert parts and set(model.state_dict()) == names
    assert all(m._compiled_call_impl is None for m in model.modules())
    with compiled(module, trainer_cfg(), torch.device("cpu")):  # auto on the CPU: eager
        assert all(m._compiled_call_impl is None for m in model.modules())


def test_progress_bar_refreshes_every_n_steps_and_cpu_keeps_cudnn_settings():
    trainer = make_trainer(trainer_cfg(progress_bar=True, progress_bar_refresh=50, accelerator="cpu"), 1)
    assert trainer.progress_bar_callback.refresh_rate == 50
    assert not make_trainer(trainer_cfg(progress_bar=False, accelerator="cpu"), 1).progress_bar_callback


def test_optimizers_are_fused_on_cuda_only():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert not configure_optimizers(p, {"name": "sgd", "lr": 0.1, "schedule": "constant"}, 1).defaults.get("fused")


@cuda
def test_optimizers_are_fused_on_cuda():
    p = [torch.nn.Parameter(torch.zeros(2, device="cuda"))]
    for name in ("sgd", "adam"):
        assert configure_optimizers(p, {"name": name, "lr": 0.1, "schedule": "constant"}, 1).defaults["fused"]


@pytest.mark.parametrize("key, value", [("compile", "maybe"), ("compile_mode", "fastest"), ("lr_batch_size", 0)])
def test_bad_compile_and_scaling_values_are_one_line_errors(compose, key, value):
    from backdoor_bench.validate import validate

    with pytest.raises(ConfigError, match=f"trainer.{key}="):
        validate(compose(f"trainer.{key}={value}", "logger=none", "cache.enabled=false"))


# -- scoring passes -------------------------------------------------------------------------------
def test_scoring_batches_are_large_on_cuda_only():
    x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    assert score_batch(512, x, torch.device("cpu")) == 512
    assert score_batch(512, x, torch.device("cuda")) == 4096
    assert score_batch(512, torch.zeros(1, 3, 224, 224), torch.device("cuda")) == 512


def test_scoring_on_the_cpu_is_fp32_per_batch_as_before():
    torch.manual_seed(0)
    model = ImageClassifier(SmallCNN(num_classes=3, in_channels=1), (0.5,), (0.5,)).eval()
    x = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8)
    got = over_batches(model, x, lambda i, xb: model.features(xb.float().div_(255)), batch_size=3)
    with torch.no_grad():
        want = torch.cat([model.features(x[i : i + 3].float() / 255) for i in range(0, 7, 3)])
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert predict(model, x, batch_size=3).tolist() == want.new_tensor(model(x.float() / 255).argmax(1)).tolist()


@cuda
def test_scoring_on_cuda_in_bf16_is_close_to_fp32():
    torch.manual_seed(0)
    model = ImageClassifier(SmallCNN(num_classes=3, in_channels=1), (0.5,), (0.5,)).eval()
    x = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    fn = lambda i, xb: model.features(xb.float().div_(255))  # noqa: E731
    got = over_batches(model, x, fn, device="cuda")
    fp32 = over_batches(model, x, fn, device="cuda", bf16=False)
    assert got.device.type == "cpu" and got.dtype == torch.float32
    torch.testing.assert_close(got, fp32, rtol=0.05, atol=0.05)


# -- trainer=gpu_fast with every experiment -------------------------------------------------------
def test_gpu_fast_composes_with_every_experiment(compose):
    names = sorted(
        str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml")
    )
    assert len(names) > 10
    for name in names:
        cfg = compose(f"experiment={name}", "trainer=gpu_fast")
        t = cfg.trainer
        assert (t.name, t.batch_size, t.lr_batch_size, t.drop_last) == ("gpu_fast", 512, 128, True), name
        assert run_optimizer(t)["lr"] == pytest.approx(4 * float(t.optimizer.lr)), name
