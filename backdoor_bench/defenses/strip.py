"""STRIP: an input-level detector (Gao, Xu, Wang, Chen, Ranasinghe and Nepal, "STRIP: A Defence
Against Trojan Attacks on Deep Neural Networks", ACSAC 2019).

Each test input is superimposed with `n_overlays` clean images (pixel sum, clipped, as the
authors' code's `cv2.addWeighted(x, 1, overlay, 1, 0)`); a trojaned input keeps predicting the
target whatever is laid over it, so the entropy of its predictions, averaged over the overlays
(Eq. 3-4), is low. The threshold is set on the trusted clean subset (each clean image overlaid
with other clean images) at the false rejection rate `frr` (1%, the paper's). The model is the
backdoored one; the evaluator reports, in a section of its own (`input_detection`), the share of
triggered test inputs flagged (TPR), of clean test inputs flagged (FPR), the AUROC, and the ASR
among the triggered inputs STRIP lets through.
"""

from __future__ import annotations

import torch

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome
from backdoor_bench.errors import ConfigError


def superimpose(x: torch.Tensor, overlays: torch.Tensor) -> torch.Tensor:
    """uint8 `x` [N, C, H, W] and `overlays` [N, K, C, H, W] -> [N, K, C, H, W]: the pixel sum,
    clipped to 255."""
    return (x[:, None].int() + overlays.int()).clamp(0, 255).to(torch.uint8)


def mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    """probs [N, K, classes] -> [N]: the Shannon entropy (bits) of each of the K predictions,
    averaged over K (STRIP's Eq. 4)."""
    p = probs.float().clamp_min(1e-12)
    return -(p * p.log2()).sum(-1).mean(-1)


class StripDetector:
    """`scores(x)`: the suspicion of uint8 inputs `x` (minus the mean entropy; higher = more
    suspicious); an input is flagged when its score exceeds `threshold`."""

    def __init__(self, model, overlays: torch.Tensor, n_overlays: int, device, seed: int, batch_size: int = 64):
        self.model, self.overlays, self.n = model, overlays, int(n_overlays)
        self.device, self.seed, self.batch_size = torch.device(device), int(seed), int(batch_size)
        self.threshold: float | None = None

    @torch.inference_mode()
    def scores(self, x: torch.Tensor, exclude_self: bool = False) -> torch.Tensor:
        """With `exclude_self` (x is the overlay pool itself), image i is never laid over itself."""
        g = torch.Generator().manual_seed(self.seed)
        m = len(self.overlays)
        was = self.model.training
        self.model.eval().to(self.device)
        out = []
        try:
            for i in range(0, len(x), self.batch_size):
                xb = x[i : i + self.batch_size]
                idx = torch.randint(0, m - int(exclude_self), (len(xb), self.n), generator=g)
                if exclude_self:  # skip the image's own index
                    idx = idx + (idx >= torch.arange(i, i + len(xb))[:, None]).long()
                blended = superimpose(xb, self.overlays[idx]).flatten(0, 1).to(self.device)
                probs = self.model(blended.float() / 255).softmax(-1).view(len(xb), self.n, -1)
                out.append(-mean_entropy(probs).cpu())
        finally:
            self.model.train(was)
        return torch.cat(out) if out else torch.zeros(0)

    def flag(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(x) > self.threshold


class Strip(Defense):
    """Args: `n_overlays` (clean images laid over each input), `frr` (the false rejection rate on
    clean inputs that sets the threshold), `batch_size` (inputs per scoring batch)."""

    needs_clean = True

    def __init__(self, name: str = "strip", n_overlays: int = 100, frr: float = 0.01, batch_size: int = 64, **kw):
        super().__init__(name=name, **kw)
        if int(n_overlays) < 1 or int(batch_size) < 1:
            raise ConfigError("defense.n_overlays and defense.batch_size must be >= 1")
        if not 0 < float(frr) < 1:
            raise ConfigError(f"defense.frr={frr} must be a rate in (0, 1): the paper uses 0.01")
        self.n_overlays, self.frr, self.batch_size = int(n_overlays), float(frr), int(batch_size)

    def run(self, ctx: DefenseContext) -> Outcome:
        if len(ctx.clean) < 2:
            raise ConfigError("defense=strip needs at least 2 clean images: raise defense.clean_fraction")
        model = ctx.backdoored_model()
        detector = StripDetector(model, ctx.clean.x, self.n_overlays, ctx.device, ctx.seed, self.batch_size)
        clean_scores = detector.scores(ctx.clean.x, exclude_self=True)
        detector.threshold = float(torch.quantile(clean_scores, 1 - self.frr))
        extra = {
            "threshold_entropy": -detector.threshold,
            "n_overlay_pool": len(ctx.clean),
            "clean_entropy_mean": float(-clean_scores.mean()),
        }
        return Outcome(model=model, input_detector=detector, extra=extra)
