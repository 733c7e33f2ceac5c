"""Shared training mechanics: build a Lightning trainer from `cfg.trainer`, fit with resumable
checkpoints, and predict on uint8 tensors."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar

from backdoor_bench.cache import atomic_write, load_checkpoint
from backdoor_bench.data.augment import CropFlip
from backdoor_bench.data.loader import DeviceLoader
from backdoor_bench.quiet import silence_known_warnings

log = logging.getLogger(__name__)

# trainer keys that change how fast a model trains, not which model comes out
EXECUTION_KEYS = {
    "name",
    "max_stage_epochs",
    "max_stage_steps",
    "accelerator",
    "devices",
    "progress_bar",
    "log_every_n_steps",
    "eval_batch_size",
    "test_subset",
    "checkpoint_every_s",
    "compile",
    "compile_mode",
    "progress_bar_refresh",
}
# trainer keys added after artifacts were first cached: left out of the spec at the value that
# keeps the old behaviour, so the keys of existing artifacts do not change
NEUTRAL_KEYS = {"drop_last": False, "lr_batch_size": None}
COMPILE = ("auto", True, False)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def training_spec(tcfg) -> dict:
    """The part of the trainer config that determines a trained model (for cache keys)."""
    d = OmegaConf.to_container(tcfg, resolve=True) if not isinstance(tcfg, dict) else dict(tcfg)
    return {k: v for k, v in d.items() if k not in EXECUTION_KEYS and not (k in NEUTRAL_KEYS and v == NEUTRAL_KEYS[k])}


class _SaveEachEpoch(pl.Callback):
    """Write a resumable checkpoint atomically at the end of a training epoch: at most once per
    `every_s` seconds (0: after every epoch), and always after the last epoch (or when training
    stops early). The checkpoint holds what a resume needs: the weights, the optimizer and LR
    schedule states and the loop counters (Lightning's `weights_only=False`)."""

    def __init__(self, path: Path, every_s: float = 0.0, clock=time.monotonic):
        self.path, self.every_s, self.clock = Path(path), float(every_s), clock
        self.last = None

    def on_train_start(self, trainer, module):
        self.last = self.clock()

    def on_train_epoch_end(self, trainer, module):
        now = self.clock()
        final = trainer.should_stop or trainer.current_epoch + 1 >= trainer.max_epochs
        if not (final or self.every_s <= 0 or self.last is None or now - self.last >= self.every_s):
            return
        atomic_write(self.path, lambda tmp: trainer.save_checkpoint(tmp, weights_only=False))
        self.last = self.clock()  # the interval counts from the end of a write


class _EpochLog(pl.Callback):
    """One log line per epoch (metrics, seconds): progress that survives in run.log and CI logs."""

    def on_train_epoch_start(self, trainer, module):
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        m = " ".join(f"{k}={float(v):.4f}" for k, v in trainer.callback_metrics.items())
        log.info(
            "epoch %d/%d %s (%.1fs)", trainer.current_epoch + 1, trainer.max_epochs, m, time.perf_counter() - self.t0
        )


def show_progress_bar(tcfg, stdout=None) -> bool:
    """`trainer.progress_bar`: true or false as set; null (the default): only when stdout is a
    terminal, so a run piped to a file or a job log writes no bar updates (run.log keeps one line
    per epoch either way)."""
    setting = tcfg.get("progress_bar")
    if setting is not None:
        return bool(setting)
    return bool((stdout or sys.stdout).isatty())


def on_cuda(tcfg) -> bool:
    """Whether the trainer trains on a CUDA GPU (`accelerator` gpu/cuda, or auto with one visible)."""
    return str(tcfg.accelerator) in ("gpu", "cuda", "auto") and torch.cuda.is_available()


def make_trainer(tcfg, max_epochs: int, logger=None, callbacks=()) -> pl.Trainer:
    """A Lightning trainer from `cfg.trainer`. On CUDA, cuDNN picks its fastest kernels for the
    fixed shapes (`benchmark`, unless `deterministic`); the progress bar, when on, redraws every
    `progress_bar_refresh` steps (each redraw reads the logged values back from the device)."""
    silence_known_warnings()
    deterministic = bool(tcfg.get("deterministic", False))
    bar = show_progress_bar(tcfg)
    if bar:
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=max(1, int(tcfg.get("progress_bar_refresh") or 1)))]
    return pl.Trainer(
        accelerator=tcfg.accelerator,
        devices=tcfg.devices,
        precision=tcfg.precision,
        max_epochs=max_epochs,
        logger=logger if logger is not None else False,
        callbacks=[_EpochLog(), *callbacks],
        enable_checkpointing=False,
        enable_progress_bar=bar,
        enable_model_summary=False,
        log_every_n_steps=tcfg.log_every_n_steps,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=deterministic,
        benchmark=True if on_cuda(tcfg) and not deterministic else None,
    )


def compile_enabled(tcfg, device: torch.device) -> bool:
    """`trainer.compile`: auto compiles on CUDA only; true or false force it."""
    c = tcfg.get("compile", False)
    return device.type == "cuda" if c == "auto" else bool(c)


@contextmanager
def compiled(module: pl.LightningModule, tcfg, device: torch.device):
    """Within the block, each child of `module.model.backbone` that holds parameters runs through
    `torch.compile` (`trainer.compile`, `trainer.compile_mode`), when the module declares
    `compilable = True` (training modules whose steps register no hooks). Compiled in place
    (`nn.Module.compile`): parameter names, state dicts and checkpoints are as in eager mode; the
    model is eager again after the block, so scoring, hooks and copies see a plain module."""
    parts = []
    if getattr(module, "compilable", False) and compile_enabled(tcfg, device):
        parts = [m for m in module.model.backbone.children() if any(True for _ in m.parameters())]
    mode = str(tcfg.get("compile_mode") or "default")
    for m in parts:
        m.compile(mode=None if mode == "default" else mode)
    try:
        yield
    finally:
        for m in parts:
            m._compiled_call_impl = None  # what nn.Module.compile set: back to the eager forward


def device_of(trainer: pl.Trainer) -> torch.device:
    return trainer.strategy.root_device


def _usable(checkpoint: Path, module: pl.LightningModule) -> dict | None:
    """A checkpoint to resume from (its state), or None: present, loadable, and a Lightning state
    of `module` (the same parameter names); anything else is deleted by `cache.load_checkpoint`
    (training starts over)."""

    def check(state) -> None:
        if not isinstance(state, dict) or not {"state_dict", "loops", "optimizer_states"} <= set(state):
            raise ValueError("not a Lightning training checkpoint")
        if set(state["state_dict"]) != set(module.state_dict()):
            raise ValueError("its parameters are not this stage's model's")

    return load_checkpoint(checkpoint, check)


def fit(
    module: pl.LightningModule,
    x: torch.Tensor,
    y: torch.Tensor,
    tcfg,
    *,
    max_epochs: int,
    augment=None,
    seed: int = 0,
    logger=None,
    checkpoint: Path | None = None,
    extras: dict | None = None,
    batch_size: int | None = None,
    callbacks=(),
    loader=None,
    on_resume: Callable[[dict], None] | None = None,
) -> pl.LightningModule:
    """Train `module` on uint8 images `x` with labels `y` for `max_epochs`.

    Data moves to the training device once; `augment` runs there on whole batches. With
    `checkpoint`, a checkpoint is written at the end of an epoch at most once per
    `tcfg.checkpoint_every_s` seconds (0: every epoch; always after the last) and an existing one
    is resumed from, so an interrupted run continues where it stopped (from the last saved epoch;
    the shuffling order after a resume differs from an uninterrupted run's). `loader(device)`, when given,
    builds the batches instead of a shuffled `DeviceLoader` over `x`, `y` (e.g. MixMatch's), else
    `trainer.drop_last` drops each epoch's last partial batch (fixed shapes for `torch.compile` and
    cuDNN). `trainer.compile` compiles the module's backbone for the fit (`compiled`).
    `on_resume({"checkpoint": path, "epochs_done": n})` is called when training resumes.
    """
    every_s = float(tcfg.get("checkpoint_every_s", 60) or 0)
    callbacks = [*callbacks, *([_SaveEachEpoch(checkpoint, every_s)] if checkpoint is not None else [])]
    trainer = make_trainer(tcfg, max_epochs, logger, callbacks)
    if loader is not None:
        loader = loader(device_of(trainer))
    else:
        loader = DeviceLoader(
            x,
            y,
            batch_size or tcfg.batch_size,
            shuffle=True,
            augment=augment,
            device=device_of(trainer),
            seed=seed,
            extras=extras,
            drop_last=bool(tcfg.get("drop_last", False)),
        )
    ckpt_path = None
    state = _usable(checkpoint, module) if checkpoint is not None else None
    if state is not None:
        done = int(state.get("epoch", -1)) + 1  # Lightning saves the index of the finished epoch
        log.info("resuming training from %s (%d epochs done)", checkpoint, done)
        ckpt_path = str(checkpoint)
        if on_resume is not None:
            on_resume({"checkpoint": str(checkpoint), "epochs_done": done})
    with compiled(module, tcfg, device_of(trainer)):
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    return module


def stage_length(tcfg, n: int, kind: str = "epochs", *, min_steps: int = 0, steps_per_epoch: int = 1) -> int:
    """A defense or SSL stage's epochs (or steps per epoch) under the trainer's cap
    (`trainer.max_stage_epochs` / `max_stage_steps`; `trainer=tiny` caps them to seconds).

    `min_steps` (epochs only): run at least this many optimizer steps, i.e. at least
    ceil(min_steps / steps_per_epoch) epochs. A stage stated as "E epochs" on 50k images is
    hundreds of steps; on 1.4k images the same E epochs are a dozen, too few to train anything.
    Set `min_steps` at or below the paper's number of steps and the paper's setting is unchanged."""
    n = int(n)
    if kind == "epochs" and int(min_steps or 0) > 0:
        n = max(n, math.ceil(int(min_steps) / max(1, int(steps_per_epoch))))
    cap = tcfg.get(f"max_stage_{kind}")
    return max(1, min(n, int(cap)) if cap is not None else n)


def steps_per_epoch(n_samples: int, batch_size: int, drop_last: bool = False) -> int:
    """Optimizer steps in one epoch over `n_samples` (as `DeviceLoader` batches them)."""
    n = n_samples / max(1, int(batch_size))
    return max(1, math.floor(n) if drop_last else math.ceil(n))


def augmentation(dcfg) -> CropFlip | None:
    """The dataset's standard training augmentation (`dataset.augment`), or None."""
    a = dcfg.get("augment")
    if not a:
        return None
    return CropFlip(padding=int(a.get("padding", 0)), flip=bool(a.get("flip", False)))


def eval_device(tcfg) -> torch.device:
    """Where evaluation runs: the GPU when the trainer may use one and one is visible."""
    if tcfg.accelerator == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def score_batch(batch_size: int, x: torch.Tensor, device: torch.device) -> int:
    """The batch size of a scoring pass: as given on the CPU; on CUDA at least 2**22 pixels per
    batch (4,096 images of 32 x 32, 83 of 224 x 224), so a pass is a few large kernels."""
    if device.type != "cuda":
        return int(batch_size)
    return max(int(batch_size), 2**22 // max(1, x.shape[-1] * x.shape[-2]))


@torch.inference_mode()
def over_batches(
    model: torch.nn.Module,
    x: torch.Tensor,
    fn,
    batch_size: int = 512,
    device="cpu",
    empty: torch.Tensor | None = None,
    bf16: bool | None = None,
) -> torch.Tensor:
    """`fn(i, xb)` on batches `xb` (uint8, on `device`) starting at `i`, the model in eval mode
    (its mode is restored afterwards); the outputs concatenated on the CPU.

    The images move to `device` once; the outputs stay there and come back in one copy at the
    end. On CUDA the batches are large (`score_batch`) and `bf16` (None: on CUDA only) runs `fn`
    under bf16 autocast, floating outputs returned in float32; on the CPU it is fp32 at the given
    batch size, as before."""
    device = torch.device(device)
    bf16 = device.type == "cuda" if bf16 is None else bool(bf16)
    batch_size = score_batch(batch_size, x, device)
    was_training = model.training
    model.eval().to(device)
    x = x.to(device)
    out = []
    try:
        for i in range(0, len(x), batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                o = fn(i, x[i : i + batch_size])
            out.append(o.float() if o.is_floating_point() else o)
    finally:
        model.train(was_training)
    return torch.cat(out).cpu() if out else (empty if empty is not None else torch.zeros(0))


def predict(
    model: torch.nn.Module,
    x: torch.Tensor,
    batch_size: int = 512,
    device="cpu",
    transform=None,
    bf16: bool | None = None,
) -> torch.Tensor:
    """Arg-max predictions for uint8 images `x` (optionally passed through `transform` first);
    `bf16` evaluates under bf16 autocast (None: on CUDA only; the evaluation passes whether the
    model was trained with bf16-mixed)."""

    def step(i, xb):
        if transform is not None:
            xb = transform(xb)
        return model(xb.float().div_(255)).argmax(1)

    return over_batches(model, x, step, batch_size, device, empty=torch.zeros(0, dtype=torch.long), bf16=bf16)


def per_sample_loss(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn,
    batch_size: int = 512,
    device="cpu",
    augment=None,
    seed: int = 0,
) -> torch.Tensor:
    """`loss_fn(logits, y, reduction="none")` for every sample, the model in eval mode; with
    `augment`, on one augmented view of each uint8 image (loss-ranking defenses, e.g. DBD)."""
    generator = torch.Generator(device=torch.device(device)).manual_seed(seed)
    y = y.to(device)

    def step(i, xb):
        if augment is not None:
            xb = augment(xb, generator)
        return loss_fn(model(xb.float().div_(255)), y[i : i + len(xb)], reduction="none")

    return over_batches(model, x, step, batch_size, device)


def extract_features(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512, device="cpu") -> torch.Tensor:
    """`model.features` (the penultimate vector) of uint8 images `x`, model in eval mode, on CPU."""
    return over_batches(model, x, lambda i, xb: model.features(xb.float().div_(255)).float(), batch_size, device)
