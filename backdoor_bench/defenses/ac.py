"""Activation Clustering (Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks by
Activation Clustering", SafeAI@AAAI 2019, arXiv 1811.03728, sections 3 and 4), a baseline of the ISPL paper
("Defending Against Backdoor Attacks Using Ensembles of Weak Learners", ICLR 2022 submission; its
appendix B.1: ART's implementation, the layer chosen as for Spectral Signatures).

Poisoned samples of a class are classified by a different feature (the trigger) than the clean
ones, so the class's activations split into two groups. With the backdoored model's activations
at `layer` (null: the penultimate features; a feature map is flattened to one vector per sample,
as ART does since the fix for its issue #2313, or averaged over space with `activations: pool`;
see training/features.py), for each class under the given labels:
1. reduce them to `components` dimensions with FastICA (the paper; `reduce: pca` as in later ART
   releases);
2. 2-means (k-means, seeded from the run's seed);
3. remove the smaller cluster when its share of the class is below `size_threshold` (the paper's
   relative-size analysis, 0.35), and, with `criterion: silhouette`, only when the clustering's
   silhouette score is also above `silhouette_threshold` (ART's silhouette analysis: a class
   that does not really split into two is left alone). `size_threshold: 0.5` always removes the
   smaller cluster: ART's default "smaller" analysis, the one the ISPL paper describes.
A sample's score is 1 - its cluster's share of its class (the smaller cluster scores higher).
Then the shared retrain on the kept samples.

The budget is a share of a CLASS, as in Chen et al. (the poisoned share of the class the poison is
labeled as), not of the whole set: the smaller cluster is removed when it holds under
`size_threshold` of its class, so a class poisoned at `size_threshold` or more is left alone
(`size_threshold: 0.5` removes the smaller cluster whatever its size, which is a coin flip when
a class is half poisoned). An all-to-one attack that poisons a share r of the whole set of C
balanced classes puts about rC / (1 + rC) of the target class under the trigger: half of it at
r = 10%, C = 10 (the default BadNets and Blended). The ISPL paper poisons epsilon (at most 20%) of
ONE source class, which its ART setting (`defense=ac/ispl`, the smaller cluster of every class)
covers.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.metrics import silhouette_score

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome, Verdict
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.features import ACTIVATIONS, layer_features, layer_name

log = logging.getLogger(__name__)

REDUCERS = ("ica", "pca")
CRITERIA = ("size", "silhouette")


def two_clusters(h: np.ndarray, components: int, reduce: str, seed: int):
    """(assignment [n] in {0, 1}, silhouette score or None) of one class's activations: reduced
    to at most `components` dimensions (never more than their rank), then 2-means."""
    k = min(components, int(np.linalg.matrix_rank(h - h.mean(0))))
    if k < 1:  # all activations equal: nothing to split
        return np.zeros(len(h), dtype=int), None
    if reduce == "ica":
        z = FastICA(n_components=k, max_iter=1000, tol=0.005, random_state=seed).fit_transform(h)
    else:
        z = PCA(n_components=k, random_state=seed).fit_transform(h)
    assignment = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(z)
    return assignment, (float(silhouette_score(z, assignment)) if len(set(assignment)) == 2 else None)


def activation_clustering(
    h: torch.Tensor,
    y: torch.Tensor,
    components: int = 10,
    reduce: str = "ica",
    criterion: str = "size",
    size_threshold: float = 0.35,
    silhouette_threshold: float = 0.1,
    seed: int = 0,
):
    """(removed bool [N], scores [N], report {class: (smaller share, silhouette)}): the module
    docstring's steps on features `h` [N, D] with labels `y`."""
    h = h.double().numpy()
    removed, scores, report = torch.zeros(len(y), dtype=torch.bool), torch.zeros(len(y)), {}
    for c in y.unique().tolist():
        idx = (y == c).nonzero().flatten()
        if len(idx) < 3:  # too few samples to form two clusters
            continue
        assignment, silhouette = two_clusters(h[idx.numpy()], components, reduce, seed)
        assignment = torch.from_numpy(assignment)
        share = torch.bincount(assignment, minlength=2).float() / len(idx)
        smaller = int(share.argmin())
        scores[idx] = 1 - share[assignment]
        report[c] = (round(float(share[smaller]), 4), silhouette)
        separated = criterion == "size" or (silhouette is not None and silhouette > silhouette_threshold)
        if share[smaller] < size_threshold and separated:
            removed[idx[assignment == smaller]] = True
    return removed, scores, report


class ActivationClustering(Defense):
    """Args: `layer` (null: penultimate features; else a submodule name), `activations` (flatten |
    pool: how a feature map becomes a vector), `components` (10), `reduce` (ica | pca),
    `criterion` (size | silhouette), `size_threshold` (0.35, a share of a class),
    `silhouette_threshold` (0.1, ART's default; used with `criterion: silhouette`)."""

    def __init__(
        self,
        name: str = "ac",
        layer: str | None = None,
        components: int = 10,
        reduce: str = "ica",
        criterion: str = "size",
        size_threshold: float = 0.35,
        silhouette_threshold: float = 0.1,
        activations: str = "flatten",
        **kw,
    ):
        super().__init__(name=name, **kw)
        if activations not in ACTIVATIONS:
            raise ConfigError(f"defense.activations={activations!r} is unknown: use one of {', '.join(ACTIVATIONS)}")
        if reduce not in REDUCERS:
            raise ConfigError(f"defense.reduce={reduce!r} is unknown: use one of {', '.join(REDUCERS)}")
        if criterion not in CRITERIA:
            raise ConfigError(f"defense.criterion={criterion!r} is unknown: use one of {', '.join(CRITERIA)}")
        if int(components) < 1:
            raise ConfigError(f"defense.components={components} must be at least 1")
        if not 0 < float(size_threshold) <= 0.5:
            raise ConfigError(
                f"defense.size_threshold={size_threshold} must be in (0, 0.5]: the smaller of two "
                "clusters holds at most half of a class"
            )
        if not -1 <= float(silhouette_threshold) <= 1:
            raise ConfigError(f"defense.silhouette_threshold={silhouette_threshold} must be in [-1, 1]")
        self.layer, self.activations = layer, activations
        self.settings = {
            "components": int(components),
            "reduce": reduce,
            "criterion": criterion,
            "size_threshold": float(size_threshold),
            "silhouette_threshold": float(silhouette_threshold),
        }

    def run(self, ctx: DefenseContext) -> Outcome:
        model = ctx.backdoored_model()
        layer = layer_name(model, ctx.train.x, self.layer)
        h = layer_features(
            model,
            ctx.train.x,
            layer,
            device=ctx.device,
            activations=self.activations,
        )
        y = ctx.train.y
        removed, scores, report = activation_clustering(h, y, **self.settings, seed=ctx.seed)
        per_class = torch.bincount(y[removed], minlength=ctx.train.num_classes).tolist()
        log.info("ac: removing %d of %d samples, per class %s", int(removed.sum()), len(y), per_class)
        verdict = Verdict(kept=~removed, scores=scores)
        extra = {
            "layer": layer,
            "activations": self.activations,
            "feature_dim": int(h.shape[1]),
            "size_threshold": self.settings["size_threshold"],
            "smaller_share": {str(c): share for c, (share, _) in report.items()},
            "silhouette": {str(c): sil for c, (_, sil) in report.items()},
            "removed_per_class": per_class,
        }
        return Outcome(model=ctx.retrain(verdict), verdict=verdict, extra=extra)
