"""LF, the low-frequency trigger (Zeng, Park, Mao, Jia, "Rethinking the Backdoor Attacks' Triggers:
A Frequency Perspective", ICCV 2021, Sec. 5 "creating smooth triggers"): a universal adversarial
perturbation toward the target class on the attacker's clean model, kept inside a low-pass band,
ADDED to every poisoned image; all2one, labels changed, 10% (BackdoorBench's
config/attack/lf/default.yaml).

BackdoorBench loads a precomputed pattern (resource/lowFrequency/<dataset>_<model>_0_255.npy, made
by targeted DeepFool UAP steps, each followed by a Gaussian smoothing and a rescaling of the pattern
to a 0.2 range). We build it, cached by config and data, with a simpler documented procedure:

1. the attacker's clean model (the run's model on the clean training set; `AttackTools`, shared
   with TrojanNN and LC) and `samples` clean non-target training images (BackdoorBench's generator
   uses 100 random training images);
2. v starts as low-passed uniform noise scaled to max |v| = `eps`;
3. `steps` times (at most `trainer.max_stage_steps`): a signed-gradient step of `step_size`
   lowering the cross-entropy of the target class on clip(x + v), then the ideal low-pass filter
   (the 2-D DFT with every frequency of radius above `cutoff` x Nyquist set to zero), then v
   rescaled to max |v| = `eps` (a fixed amplitude, as BackdoorBench's generator fixes its range);
4. the trigger: x' = clip(round(x + v)), in pixel levels. The share of the sample the clean model
   sends to the target before and after is logged and cached.

`pattern_path` (an array HW, HWC or CHW in pixel levels, e.g. BackdoorBench's .npy; or
`asset:backdoorbench_lf_cifar10_preactresnet18`) is added instead and nothing is trained.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from backdoor_bench.attacks.base import Attack
from backdoor_bench.attacks.triggers import check_pattern_file, load_array, to_chw, with_file_hash
from backdoor_bench.errors import ConfigError

log = logging.getLogger(__name__)


def low_pass(v: torch.Tensor, cutoff: float) -> torch.Tensor:
    """The ideal low-pass filter on `[..., H, W]`: DFT frequencies (in cycles per pixel, 0.5 the
    Nyquist) with sqrt(fy^2 + fx^2) / 0.5 > `cutoff` removed; the result is real."""
    h, w = v.shape[-2:]
    fy, fx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    keep = ((fy[:, None] ** 2 + fx[None] ** 2).sqrt() / 0.5 <= cutoff + 1e-12).to(v.device)
    return torch.fft.ifft2(torch.fft.fft2(v.double()) * keep).real.to(v.dtype)


def to_amplitude(v: torch.Tensor, eps: float) -> torch.Tensor:
    """`v` scaled to max |v| = `eps` (zero stays zero)."""
    m = v.abs().max()
    return v * (eps / m) if m > 0 else v


class LowFrequency(Attack):
    """Args (beyond `Attack`'s): `eps` (max |v|, pixel levels), `steps` (at most
    `trainer.max_stage_steps`), `step_size` (pixel levels), `cutoff` (the pass band's radius as a
    fraction of the Nyquist frequency), `samples` (clean images the perturbation is fitted on),
    `surrogate_epochs` (null: trainer.max_epochs), `pattern_path` (a fixed additive pattern)."""

    needs_tools = True

    def __init__(
        self,
        eps: float = 25.5,
        steps: int = 200,
        step_size: float = 2.0,
        cutoff: float = 0.25,
        samples: int = 100,
        surrogate_epochs: int | None = None,
        pattern_path: str | None = None,
        **kw,
    ):
        super().__init__(**kw)
        if not 0 < float(eps) <= 255 or float(step_size) <= 0:
            raise ConfigError(f"attack.eps={eps} must be in (0, 255] and attack.step_size={step_size} > 0")
        if not 0 < float(cutoff) <= 1.5:
            raise ConfigError(f"attack.cutoff={cutoff} must be in (0, 1.5]: a fraction of the Nyquist frequency")
        if int(steps) < 0 or int(samples) < 1:
            raise ConfigError("attack.steps must be >= 0 and attack.samples >= 1")
        if pattern_path:
            check_pattern_file(pattern_path, "attack.pattern_path")
        self.eps, self.steps, self.step_size = float(eps), int(steps), float(step_size)
        self.cutoff, self.samples, self.pattern_path = float(cutoff), int(samples), pattern_path
        self.needs_tools = not pattern_path  # a fixed pattern trains nothing
        self._pattern: torch.Tensor | None = None

    def poison_spec(self, cfg):
        return with_file_hash(super().poison_spec(cfg), "pattern", self.pattern_path)

    def pattern(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """The additive pattern, float `[C, H, W]` in pixel levels (built once, then cached)."""
        if self.pattern_path:
            return to_chw(load_array(Path(self.pattern_path).expanduser()), shape)
        if self._pattern is None:
            tools = self.require_tools()
            steps = tools.stage_length(self.steps, "steps")
            spec = {
                "attack": "lf",
                "target": self.target,
                "eps": self.eps,
                "steps": steps,
                "step_size": self.step_size,
                "cutoff": self.cutoff,
                "samples": self.samples,
                "filter": "ideal",
                **tools.spec,
            }
            self._pattern = tools.cached("lf_pattern", spec, lambda: self.optimise(steps))["pattern"]
        return self._pattern

    def optimise(self, steps: int) -> dict:
        """The universal low-frequency perturbation (see the module docstring). The payload: the
        pattern (float32 levels) and the target share of the sample before and after."""
        tools = self.require_tools()
        model = tools.clean_model().eval().to(tools.device)
        for p in model.parameters():
            p.requires_grad_(False)
        g = torch.Generator().manual_seed(tools.seed)
        pool = (tools.clean.y != self.target).nonzero().flatten()
        pick = pool[torch.randperm(len(pool), generator=g)[: self.samples]]
        x = tools.clean.x[pick].to(tools.device).float() / 255
        y = torch.full((len(x),), self.target, device=tools.device)
        eps, step = self.eps / 255, self.step_size / 255
        v = to_amplitude(low_pass(torch.rand(x.shape[1:], generator=g) * 2 - 1, self.cutoff), eps).to(tools.device)

        def target_share(v):
            with torch.no_grad():
                return (model((x + v).clamp(0, 1)).argmax(1) == self.target).float().mean().item()

        before = target_share(v)
        for _ in range(steps):
            v.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model((x + v).clamp(0, 1)), y), v)
            v = to_amplitude(low_pass(v.detach() - step * grad.sign(), self.cutoff), eps)
        after = target_share(v)
        log.info(
            "lf pattern: the clean model sends %.3f -> %.3f of %d clean images to class %d over %d steps",
            before,
            after,
            len(x),
            self.target,
            steps,
        )
        return {"pattern": (v * 255).float().cpu(), "target_before": before, "target_after": after}

    def apply(self, x):
        pattern = self.pattern(tuple(x.shape[1:])).to(x.device)
        return (x.double() + pattern.double()).round().clamp(0, 255).to(torch.uint8)
