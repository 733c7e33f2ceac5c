"""Fixed metric definitions used by every run (see the README's Metrics table).

All values are fractions in [0, 1]; a metric over an empty set is `None` (null in JSON).
"""

from __future__ import annotations

import torch


def _mean(mask: torch.Tensor) -> float | None:
    return int(mask.sum()) / mask.numel() if mask.numel() else None


def attack_metrics(
    pred_clean: torch.Tensor,
    pred_triggered: torch.Tensor,
    y: torch.Tensor,
    y_target: torch.Tensor,
    asr_mask: torch.Tensor,
) -> dict:
    """Clean accuracy and backdoor metrics from test predictions.

    Args:
        pred_clean: predictions on the clean test images.
        pred_triggered: predictions on the same images with the test-time trigger.
        y: true test labels. y_target: the label the attacker wants for each triggered image.
        asr_mask: the images that enter ASR and RA (non-target images for all2one; all for all2all).

    Returns `acc` (all clean images), `acc_nontarget` (clean accuracy on the ASR images, i.e. those
    whose label is not the target), `asr` (triggered ASR images predicted as their target) and
    `ra` (the same triggered images predicted as their true label).
    """
    m = asr_mask.bool()
    return {
        "acc": _mean(pred_clean == y),
        "acc_nontarget": _mean(pred_clean[m] == y[m]),
        "asr": _mean(pred_triggered[m] == y_target[m]),
        "ra": _mean(pred_triggered[m] == y[m]),
    }


def detection_metrics(
    kept: torch.Tensor,
    labels: torch.Tensor | None,
    given: torch.Tensor,
    poisoned: torch.Tensor,
    y_true: torch.Tensor,
    trusted: torch.Tensor | None = None,
) -> dict:
    """How well a defense's verdict on the training set matches the ground truth.

    A sample is flagged when the defense removes it (`~kept`) or gives it a new label
    (`labels != given`). `tpr` = flagged poisoned / poisoned, `fpr` = flagged clean / clean,
    `precision` = poisoned among flagged; `fp` counts flagged clean samples and `fn` poisoned
    samples left unflagged. `kept_poison_rate` is the poisoned share of the samples kept (e.g. DBD's
    labeled set). `relabel_acc` is the share of relabeled poisoned samples that got
    back their true class (the flows paper, Table 2). With `trusted` (the samples a defense judged
    surely clean), `trusted_purity` is their clean share and `n_trusted` their number.
    """
    kept, poisoned = kept.bool(), poisoned.bool()
    relabeled = kept & (labels != given) if labels is not None else torch.zeros_like(kept)
    flagged = ~kept | relabeled
    tp, fp = int((flagged & poisoned).sum()), int((flagged & ~poisoned).sum())
    n_pos, n_neg = int(poisoned.sum()), int((~poisoned).sum())
    rp = relabeled & poisoned
    return {
        "tpr": tp / n_pos if n_pos else None,
        "fpr": fp / n_neg if n_neg else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "tp": tp,
        "fp": fp,
        "fn": n_pos - tp,
        "n_flagged": int(flagged.sum()),
        "n_removed": int((~kept).sum()),
        "n_relabeled": int(relabeled.sum()),
        "kept_poison_rate": _mean(poisoned[kept]),
        "relabel_acc": _mean(labels[rp] == y_true[rp]) if labels is not None else None,
        **(
            {"trusted_purity": _mean(~poisoned[trusted.bool()]), "n_trusted": int(trusted.sum())}
            if trusted is not None
            else {}
        ),
    }


def targeted_misclassification_rate(
    pred_clean: torch.Tensor, pred_triggered: torch.Tensor, y: torch.Tensor, source: int, target: int
) -> float | None:
    """The ISPL paper's targeted misclassification rate (TMR, Sec. 3.1, Eq. 7) over
    source-class test images: the share predicted as `target` when triggered and as `source`
    (correctly) when clean."""
    m = y == source
    return _mean((pred_triggered[m] == target) & (pred_clean[m] == source))


def input_detection_metrics(
    scores_clean: torch.Tensor, scores_triggered: torch.Tensor, threshold: float, hit: torch.Tensor
) -> dict:
    """How well an input-level detector (e.g. STRIP) screens test inputs.

    `scores_clean`: suspicion of every clean test input; `scores_triggered`: of the triggered test
    inputs that enter ASR; an input is flagged when its score exceeds `threshold`. `hit`: bool, per
    triggered input, whether the model predicts the attacker's target. Returns `tpr` (triggered
    inputs flagged), `fpr` (clean inputs flagged), `auroc` (triggered vs clean, ties counted half),
    `asr_passed` (ASR among the triggered inputs not flagged: what the attacker still gets) and the
    counts.
    """
    flag_c, flag_t = scores_clean > threshold, scores_triggered > threshold
    sc, st = scores_clean.double(), scores_triggered.double()
    auroc = None
    if len(sc) and len(st):  # P(score_triggered > score_clean) + 0.5 P(equal)
        from sklearn.metrics import roc_auc_score

        labels = torch.cat([torch.zeros(len(sc)), torch.ones(len(st))]).numpy()
        auroc = float(roc_auc_score(labels, torch.cat([sc, st]).numpy()))
    passed = ~flag_t
    return {
        "tpr": _mean(flag_t),
        "fpr": _mean(flag_c),
        "auroc": auroc,
        "asr_passed": _mean(hit.bool()[passed]),
        "n_clean": len(sc),
        "n_triggered": len(st),
        "n_passed": int(passed.sum()),
    }
