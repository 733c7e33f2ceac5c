"""DP-SGD: Opacus' per-sample clipping and noise scale on small tensors, the privacy accountant
against a closed form and a pinned value, the model check, and a run on a tiny context."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from backdoor_bench.data import ImageSet
from backdoor_bench.defenses.dpsgd import DPSGD, check_private, dp_epsilon, no_inplace, privacy_engine
from backdoor_bench.errors import ConfigError
from tests.unit.contexts import context


def one_step(x: torch.Tensor, noise: float, clip: float, batch_size: int, seed: int = 0):
    """One DP-SGD step of a bias-free linear model (weight 0) with loss mean_i(w . x_i): each
    sample's gradient is x_i. Returns (the batch's indices, the gradient the optimizer applied,
    the expected batch size)."""
    model = nn.Linear(x.shape[1], 1, bias=False)
    nn.init.zeros_(model.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    torch.manual_seed(seed)
    _, private, optimizer, loader = privacy_engine(model, optimizer, len(x), batch_size, noise, clip, seed=seed)
    (idx,) = next(iter(loader))
    optimizer.zero_grad()
    private(x[idx]).mean().backward()
    optimizer.step()
    return idx, -model.weight.detach().flatten(), optimizer.expected_batch_size  # w = 0 - lr x grad


def test_per_sample_gradients_are_clipped_to_the_bound_and_averaged_over_the_expected_batch():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0], [1.0, 0.0]])  # per-sample gradient norms 5, 0.5, 10, 1
    idx, grad, expected_batch = one_step(x, noise=0.0, clip=1.0, batch_size=2)
    assert expected_batch == 2 and len(idx) > 0  # sampling rate 2 / 4
    norms = x.norm(dim=1, keepdim=True)
    clipped = x * (1.0 / (norms + 1e-6)).clamp(max=1.0)  # Opacus' factor C / (||g|| + 1e-6), at most 1
    assert torch.allclose(grad, clipped[idx].sum(0) / 2, atol=1e-7)
    # the clipped gradients, exactly: [0.6, 0.8], [0.3, 0.4] (under the bound, kept), [0.6, 0.8], [1, 0]
    assert torch.allclose(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.6, 0.8], [1.0, 0.0]]), atol=1e-6)


def test_noise_has_std_sigma_times_clip_over_the_expected_batch():
    x = torch.zeros(40, 10_000)  # zero per-sample gradients: what the optimizer applies is the noise alone
    _, grad, expected_batch = one_step(x, noise=2.0, clip=0.5, batch_size=8)
    assert expected_batch == 8
    assert grad.std().item() == pytest.approx(2.0 * 0.5 / 8, rel=0.03)  # sigma C / B = 0.125
    assert abs(grad.mean().item()) < 0.125 * 4 / math.sqrt(10_000)


def test_epsilon_of_the_full_batch_gaussian_mechanism_matches_the_closed_form():
    """Sampling rate 1: T compositions of the Gaussian mechanism are (alpha, T alpha / (2 sigma^2))-RDP
    (Mironov, CSF 2017, Prop. 7 and Cor. 3); the conversion to (epsilon, delta) of Balle et al.
    (AISTATS 2020, Thm. 21), minimised over Opacus' default orders."""
    alphas = np.array([1 + k / 10 for k in range(1, 100)] + list(range(12, 64)), dtype=float)
    sigma, steps, delta = 1.0, 10, 1e-5
    rdp = steps * alphas / (2 * sigma**2)
    eps = rdp - (np.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    assert dp_epsilon(sigma, 1.0, steps, delta) == pytest.approx(float(eps.min()), rel=1e-12)
    assert dp_epsilon(sigma, 1.0, steps, delta) == pytest.approx(19.0536, abs=1e-4)  # at alpha = 2.5


def test_epsilon_of_the_subsampled_mechanism_is_pinned():
    """sigma 1, sampling rate 0.01, 1,000 steps, delta 1e-5: 2.1014 with Opacus 1.6's RDP accountant
    (computed once; subsampling amplifies privacy: far below the 654.9 of the same steps at rate 1)."""
    assert dp_epsilon(1.0, 0.01, 1000, 1e-5) == pytest.approx(2.10137, abs=1e-4)
    assert dp_epsilon(1.0, 1.0, 1000, 1e-5) == pytest.approx(654.86, abs=0.01)
    assert dp_epsilon(2.0, 0.01, 1000, 1e-5) < dp_epsilon(1.0, 0.01, 1000, 1e-5)  # more noise, less epsilon


def test_batchnorm_models_are_refused_with_one_line_naming_model_norm():
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(
        ConfigError,
        match=r"defense=dpsgd needs a model without BatchNorm: set defense.model_norm=group or model.norm=group",
    ) as e:
        check_private(bn)
    assert "\n" not in str(e.value)
    check_private(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4)))  # fine


def test_no_inplace_turns_off_inplace_activations_only():
    model = no_inplace(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Dropout(0.5, inplace=True)))
    assert not model[1].inplace and not model[2].inplace


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"noise_multiplier": -1}, "defense.noise_multiplier"),
        ({"max_grad_norm": 0}, "defense.max_grad_norm"),
        ({"delta": 1.5}, "defense.delta"),
        ({"accountant": "moments"}, "defense.accountant"),
        ({"epochs": 0}, "defense.epochs"),
        ({"optimizer": {"name": "lbfgs", "lr": 0.1}}, "defense.optimizer.name"),
    ],
)
def test_dpsgd_rejects_bad_settings(kw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        DPSGD(**kw)


def tiny_set(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageSet(
        torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 2, ["a", "b"]
    )


def test_dpsgd_run_reports_the_accountants_epsilon_for_the_steps_it_took():
    ctx = context(tiny_set(), "model.norm=group")
    optimizer = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": "cosine"}
    out = DPSGD(noise_multiplier=1.0, epochs=5, batch_size=10, optimizer=optimizer).run(ctx)
    e = out.extra
    # trainer=tiny: 2 epochs (stage cap) of at most 2 steps; the loader has 4 batches of expected size 10
    assert (e["epochs"], e["steps"], e["sample_rate"]) == (2, 4, 0.25)
    assert e["epsilon"] == pytest.approx(dp_epsilon(1.0, 0.25, 4, 1e-5), rel=1e-9)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in out.model.modules())
    assert out.model(torch.rand(3, 1, 8, 8)).shape == (3, 2) and out.verdict is None
    assert not any(hasattr(p, "grad_sample") for p in out.model.parameters())  # Opacus' traces removed


def test_dpsgd_builds_a_groupnorm_model_whatever_the_runs_norm():
    out = DPSGD(epochs=1, batch_size=10).run(context(tiny_set()))  # the run's model: BatchNorm
    assert any(isinstance(m, nn.GroupNorm) for m in out.model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in out.model.modules())


def test_dpsgd_with_the_runs_model_fails_on_batchnorm():
    with pytest.raises(ConfigError, match="set defense.model_norm=group or model.norm=group"):
        DPSGD(epochs=1, batch_size=10, model_norm=None).run(context(tiny_set()))


def test_an_interrupted_dpsgd_run_resumes_to_the_uninterrupted_weights_and_epsilon(monkeypatch):
    from backdoor_bench.runner import StageState

    optimizer = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": "cosine"}
    train = tiny_set()
    defense = DPSGD(noise_multiplier=1.0, epochs=2, batch_size=10, optimizer=optimizer)
    whole = defense.run(context(train, "model.norm=group"))

    class Interrupted(Exception):
        pass

    save = StageState.save

    def save_then_stop(self, obj):  # the process dies right after the first epoch's checkpoint
        save(self, obj)
        raise Interrupted

    ctx = context(train, "model.norm=group")
    monkeypatch.setattr(StageState, "save", save_then_stop)
    with pytest.raises(Interrupted):
        defense.run(ctx)
    monkeypatch.setattr(StageState, "save", save)
    resumed = defense.run(ctx)  # the same cache: continues after epoch 1
    assert [r["stage"] for r in ctx._runner.resumed] == ["dpsgd"]
    assert resumed.extra == whole.extra  # steps, epochs and epsilon of the whole run
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not list((ctx._runner.cache.root / "defense_stage").rglob("partial.ckpt"))  # cleared once done
