"""DP-SGD as a backdoor defense (Du, Jia and Song, "Robust Anomaly Detection and Backdoor Attack
Detection via Differential Privacy", ICLR 2020), set up as DBD's baseline (Huang, Li, Wu, Qin and
Ren, "Backdoor Defense via Decoupling the Training Process", ICLR 2022, App. B.3 and App. D.1).

A fresh model is trained on the poisoned set with the differentially private SGD of Abadi et al.
("Deep Learning with Differential Privacy", CCS 2016), through Opacus as DBD re-implements it:
each step samples a batch by Poisson sampling (rate `batch_size / N`), clips every sample's
gradient to L2 norm `max_grad_norm` (C), sums them, adds Gaussian noise of standard deviation
`noise_multiplier` x C (sigma) and divides by the expected batch size. Bounding each sample's
influence and drowning it in noise keeps the few poisoned samples from planting the backdoor, at a
large cost in clean accuracy (DBD's Table 1: 44% BA on CIFAR-10 under BadNets).

DBD's settings: "we replace the original SGD optimizer with the differentially private one", so
the run's training recipe (epochs, batch size, optimizer and schedule: the yaml interpolates
`trainer.*`) with C = 1 and sigma chosen per attack by grid search (App. D.1, Table 10, by BA - ASR
on CIFAR-10): 0.5 for BadNets (the default here), 0.3 for Blended and WaNet. The privacy budget
epsilon at `delta` (1e-5) comes from Opacus' accountant (`accountant: rdp`, the moments
accountant's Renyi-DP form) and lands in `defense_extra`.

Opacus needs per-sample gradients, which BatchNorm does not have: the fresh model is built with
GroupNorm (`model_norm: group`, the default, overrides the run's `model.norm`, so DP-SGD sweeps
beside the other defenses); with `model_norm: null` the run's model is used as configured and one
with BatchNorm fails with a one-line ConfigError.
The loop is plain PyTorch on `ctx.device` (fp32; the trainer's precision and memory format do not
apply), one log line per epoch. It is resumable per epoch: the model, the optimizer and scheduler,
the accountant's history and every random stream (Poisson draws, noise, augmentation) are saved
after each epoch, so a rerun of an interrupted run continues where it stopped and ends with the
weights and epsilon of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
import warnings

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.optim import configure_optimizers

log = logging.getLogger(__name__)

ACCOUNTANTS = ("rdp", "prv", "gdp")


def check_private(model: torch.nn.Module) -> None:
    """A one-line ConfigError when Opacus cannot compute per-sample gradients of `model`."""
    from opacus.validators import ModuleValidator

    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(
            "defense=dpsgd needs a model without BatchNorm: set defense.model_norm=group or model.norm=group "
            "(small_cnn, preact_resnet18, resnet18 and resnet32 have the option)"
        )
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"defense=dpsgd cannot train model {type(model).__name__}: {'; '.join(map(str, errors))}")


def no_inplace(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with every in-place activation made out-of-place (the same function): Opacus'
    backward hooks forbid changing a hooked layer's output in place."""
    for m in model.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    return model


def privacy_engine(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    n: int,
    batch_size: int,
    noise_multiplier: float,
    max_grad_norm: float,
    *,
    accountant: str = "rdp",
    seed: int = 0,
    generator: torch.Generator | None = None,
):
    """(engine, private model, DP optimizer, Poisson loader of sample indices): Opacus' DP-SGD
    over `n` samples at sampling rate `batch_size / n`. The loader yields `(index,)` batches; the
    Poisson draws follow `generator` (default: a new one seeded with `seed`), the noise follows
    torch's global generator."""
    from opacus import PrivacyEngine

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        engine = PrivacyEngine(accountant=accountant)
    loader = DataLoader(
        TensorDataset(torch.arange(n)),
        batch_size=batch_size,
        shuffle=True,
        generator=generator if generator is not None else torch.Generator().manual_seed(seed),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*full backward hook.*")
        model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=float(max_grad_norm),
            poisson_sampling=True,
        )
    return engine, model, optimizer, loader


def dp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` of `steps` steps of the subsampled Gaussian mechanism (Opacus' accountant)."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=float(delta)))


class DPSGD(Defense):
    """Args: `noise_multiplier` (sigma; DBD: 0.5 BadNets, 0.3 Blended/WaNet on CIFAR-10),
    `max_grad_norm` (C; DBD: 1), `delta` (the privacy budget's delta), `accountant` (rdp, prv,
    gdp), `epochs`, `batch_size` (the expected Poisson batch) and `optimizer` (a config like
    `trainer.optimizer`): the run's recipe by default (the yaml interpolates them); `model_norm`
    (the fresh model's `model.norm`: group; null keeps the run's)."""

    def __init__(
        self,
        name: str = "dpsgd",
        noise_multiplier: float = 0.5,
        max_grad_norm: float = 1.0,
        delta: float = 1e-5,
        accountant: str = "rdp",
        epochs: int = 30,
        batch_size: int = 128,
        optimizer: dict | None = None,
        model_norm: str | None = "group",
        **kw,
    ):
        super().__init__(name=name, **kw)
        if not float(noise_multiplier) >= 0:
            raise ConfigError(f"defense.noise_multiplier={noise_multiplier} must be >= 0 (the noise std / C)")
        if not float(max_grad_norm) > 0:
            raise ConfigError(f"defense.max_grad_norm={max_grad_norm} must be > 0 (the per-sample clipping bound)")
        if not 0 < float(delta) < 1:
            raise ConfigError(f"defense.delta={delta} must be in (0, 1)")
        if accountant not in ACCOUNTANTS:
            raise ConfigError(f"defense.accountant={accountant!r} is unknown: use one of {', '.join(ACCOUNTANTS)}")
        if int(epochs) < 1 or int(batch_size) < 1:
            raise ConfigError(f"defense.epochs={epochs} and defense.batch_size={batch_size} must be >= 1")
        if isinstance(optimizer, DictConfig):
            optimizer = OmegaConf.to_container(optimizer, resolve=True)
        self.optimizer = dict(optimizer or {"name": "sgd", "lr": 0.01, "momentum": 0.9, "schedule": "cosine"})
        if self.optimizer.get("name", "sgd") not in ("sgd", "adam"):
            raise ConfigError(f"defense.optimizer.name={self.optimizer.get('name')!r} is unknown: use sgd or adam")
        self.noise_multiplier, self.max_grad_norm = float(noise_multiplier), float(max_grad_norm)
        self.delta, self.accountant = float(delta), accountant
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        self.model_norm = model_norm

    def check_model(self, model: torch.nn.Module) -> None:
        """The run's model must suit Opacus (no BatchNorm): a one-line ConfigError otherwise."""
        check_private(model)

    def run(self, ctx: DefenseContext) -> Outcome:
        model = ctx.new_model(norm=self.model_norm) if self.model_norm else ctx.new_model()
        self.check_model(model)
        train, device = ctx.train, torch.device(ctx.device)
        n, epochs = len(train), ctx.stage_length(self.epochs)
        model = no_inplace(model).to(device).train()
        configured = configure_optimizers(model.parameters(), self.optimizer, epochs)
        optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
        scheduler = configured["lr_scheduler"]["scheduler"] if isinstance(configured, dict) else None
        torch.manual_seed(ctx.seed)  # the noise draws
        draws = torch.Generator().manual_seed(ctx.seed)  # the Poisson draws (Opacus samples with it)
        engine, private, optimizer, loader = privacy_engine(
            model,
            optimizer,
            n,
            min(self.batch_size, n),
            self.noise_multiplier,
            self.max_grad_norm,
            accountant=self.accountant,
            generator=draws,
        )
        steps_per_epoch = ctx.stage_length(len(loader), "steps")
        x, y = train.x.to(device), train.y.to(device)
        generator = torch.Generator(device=device).manual_seed(ctx.seed)
        state = ctx.stage_state("dpsgd")
        saved = state.load(check=lambda s: s["epochs"] == epochs and s["epoch"] < epochs)
        start, steps = 0, 0
        if saved is not None:
            private._module.load_state_dict(saved["model"])
            optimizer.original_optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(saved["scheduler"])
            engine.accountant.history = [tuple(h) for h in saved["history"]]
            torch.set_rng_state(saved["noise_rng"])
            draws.set_state(saved["draws_rng"])
            generator.set_state(saved["augment_rng"])
            start, steps = int(saved["epoch"]), int(saved["steps"])
            log.info("dpsgd: resuming after epoch %d of %d (%d steps taken)", start, epochs, steps)
        log.info(
            "dpsgd: %d epochs of %d steps, sample rate %.4f, sigma %.3g, C %.3g",
            epochs,
            steps_per_epoch,
            1 / len(loader),
            self.noise_multiplier,
            self.max_grad_norm,
        )
        warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")  # inputs need no grad
        for epoch in range(start, epochs):
            t0, total, correct, seen = time.perf_counter(), 0.0, 0, 0
            for step, (idx,) in enumerate(loader):
                if step >= steps_per_epoch:
                    break
                if len(idx) == 0:  # an empty Poisson batch (probability (1 - q)^N): nothing to release
                    continue
                idx = idx.to(device)
                xb = ctx.augment(x[idx], generator).float().div_(255)
                optimizer.zero_grad(set_to_none=True)
                logits = private(xb)
                loss = F.cross_entropy(logits, y[idx])
                loss.backward()
                optimizer.step()
                steps += 1
                total += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == y[idx]).sum())
                seen += len(idx)
            if scheduler is not None:
                scheduler.step()
            log.info(
                "dpsgd epoch %d/%d loss=%.4f acc=%.4f epsilon=%.3f (%.1fs)",
                epoch + 1,
                epochs,
                total / max(1, seen),
                correct / max(1, seen),
                engine.get_epsilon(self.delta) if steps else 0.0,
                time.perf_counter() - t0,
            )
            if epoch + 1 < epochs:
                state.save(
                    {
                        "epoch": epoch + 1,
                        "epochs": epochs,
                        "steps": steps,
                        "model": private._module.state_dict(),
                        "optimizer": optimizer.original_optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else {},
                        "history": [list(h) for h in engine.accountant.history],
                        "noise_rng": torch.get_rng_state(),
                        "draws_rng": draws.get_state(),
                        "augment_rng": generator.get_state(),
                    }
                )
        state.clear()
        epsilon = float(engine.get_epsilon(self.delta)) if steps else 0.0
        extra = {
            "epsilon": epsilon if math.isfinite(epsilon) else None,
            "delta": self.delta,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": 1 / len(loader),
            "steps": steps,
            "epochs": epochs,
        }
        log.info("dpsgd: epsilon %.3f at delta %g after %d steps", epsilon, self.delta, steps)
        return Outcome(model=private.to_standard_module().cpu().eval(), extra=extra)
