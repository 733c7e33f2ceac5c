"""Figures saved in the run directory (and logged to W&B)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _show(ax, img: torch.Tensor, title: str | None = None):
    img = img.detach().cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(img.permute(1, 2, 0).numpy())
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def amplified_difference(clean: torch.Tensor, poisoned: torch.Tensor) -> tuple[torch.Tensor, float]:
    """|poisoned - clean| scaled so that the largest change is full white; returns (uint8, factor)."""
    diff = (poisoned.float() - clean.float()).abs()
    factor = 255.0 / max(float(diff.max()), 1.0)
    return (diff * factor).round().clamp(0, 255).to(torch.uint8), factor


def trigger_gallery(rows: list[tuple[str, torch.Tensor, torch.Tensor]], path: Path, n: int = 4) -> Path:
    """One row per attack: `n` clean images, the same poisoned, and their amplified difference.

    `rows` holds (label, clean uint8 [K,C,H,W], poisoned uint8 [K,C,H,W]).
    """
    n = min(n, min(len(c) for _, c, _ in rows))
    fig, axes = plt.subplots(len(rows), 3 * n, figsize=(1.3 * 3 * n, 1.45 * len(rows)), squeeze=False)
    for r, (label, clean, poisoned) in enumerate(rows):
        diff, factor = amplified_difference(clean[:n], poisoned[:n])
        for i in range(n):
            _show(axes[r, i], clean[i], "clean" if r == 0 else None)
            _show(axes[r, n + i], poisoned[i], "poisoned" if r == 0 else None)
            _show(axes[r, 2 * n + i], diff[i], f"|diff| x{factor:.0f}")
        axes[r, 0].set_ylabel(label, fontsize=9)
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG (creating folders) and free the figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def score_histogram(
    scores: torch.Tensor, poisoned: torch.Tensor, kept: torch.Tensor, path: Path, title: str = ""
) -> Path:
    """A defense's per-sample scores (higher = more suspicious), clean and poisoned samples apart,
    with the kept samples' range shaded: where the verdict's line falls between the two. Samples
    a defense did not score (NaN, e.g. outside flow_relabel's flagged classes) are left out."""
    ok = torch.isfinite(scores.float())  # unscored samples (NaN) are left out
    scores, poisoned, kept = scores.float()[ok], poisoned.bool()[ok], kept.bool()[ok]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    lo, hi = float(scores.min()), float(scores.max())
    log_x = lo > 0 and hi / lo > 100  # scores spanning orders of magnitude (e.g. D-ST/D-BR's FCT)
    bins = (
        torch.logspace(math.log10(lo), math.log10(hi) + 1e-6, 41) if log_x else torch.linspace(lo, hi + 1e-6, 41)
    ).tolist()
    ax.hist(scores[~poisoned].tolist(), bins=bins, alpha=0.6, label=f"clean ({int((~poisoned).sum())})")
    ax.hist(scores[poisoned].tolist(), bins=bins, alpha=0.6, label=f"poisoned ({int(poisoned.sum())})", color="C3")
    if kept.any() and (~kept).any():
        ax.axvspan(float(scores[kept].min()), float(scores[kept].max()), color="C2", alpha=0.1, label="kept")
    ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("score (higher = more suspicious)")
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def foreign_density_histograms(
    v: torch.Tensor, y: torch.Tensor, mus: torch.Tensor, flagged: torch.Tensor, path: Path, bins: int = 30
) -> Path:
    """The flows paper's Figure 3: per class, the maximum foreign log-density of its samples, with the
    valley mu that splits off the outliers; flagged classes in red."""
    classes = sorted(set(y.tolist()))
    cols = min(5, len(classes))
    rows = (len(classes) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 1.9 * rows), squeeze=False)
    for ax, c in zip(axes.flat, classes):
        vc = v[y == c]
        ax.hist(vc.tolist(), bins=bins, color="C3" if bool(flagged[c]) else "C0")
        ax.axvline(float(mus[c]), color="k", lw=0.8, ls="--")
        ax.set_title(f"class {c}" + (" (flagged)" if bool(flagged[c]) else ""), fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(classes) :]:
        ax.axis("off")
    fig.suptitle("max foreign log-density v per class (dashed: valley mu)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def reversed_triggers(
    masks: torch.Tensor,
    patterns: torch.Tensor,
    norms: torch.Tensor,
    index: torch.Tensor,
    flagged: list[int],
    path: Path,
) -> Path:
    """Neural Cleanse's reversed triggers, one column per class: the mask [H, W], the pattern
    [C, H, W] and the stamped part m x p (all in [0, 1]), titled with the mask's L1 norm and the
    anomaly index; flagged classes in red."""
    k = len(masks)
    fig, axes = plt.subplots(3, k, figsize=(1.25 * k, 4.2), squeeze=False)
    for c in range(k):
        fused = masks[c] * patterns[c]
        for r, img in enumerate((masks[c][None], patterns[c], fused)):
            _show(axes[r, c], (img.clamp(0, 1) * 255).round().to(torch.uint8))
        color = "C3" if c in flagged else "k"
        axes[0, c].set_title(f"class {c}\n|m| {float(norms[c]):.1f}\nAI {float(index[c]):.1f}", fontsize=7, color=color)
    for r, label in enumerate(("mask", "pattern", "mask x pattern")):
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle("Neural Cleanse: reversed triggers (red: flagged)", fontsize=9)
    return save_figure(fig, path)
