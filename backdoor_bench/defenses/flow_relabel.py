"""Per-class normalizing flows on self-supervised features, then relabeling (Sabolic, Grubisic and
Segvic, "Mitigating Backdoor Attacks with Generative Modelling and Dataset Relabeling", ICLR'24
submission / BMVC'24).

1. Features z = f(x): the shared SimCLR backbone's (`ctx.ssl_backbone()`, with `ssl=flows` the
   paper's recipe; `variant=supervised` uses the backdoored model's, Table 3), as the backbone
   gives them (Sec. 4.3). `standardize: true` (off by default; not in the paper) L2-normalises
   them and standardises every dimension first.
2. One flow per class, fitted on that class's features (Sec. 4.3, Eq. 2); L[i, c] = log p_c(z_i).
   L is cached per features and flow settings, so a rerun with other thresholds refits nothing.
3. Target classes (Sec. 4.4):
   - non-disruptive, `nd_score: foreign_nll` (default): Eq. 3, S_ND(y) = the mean NLL of class
     y's flow over the samples NOT labeled y, which that flow never fitted. The target class's
     flow learned the poisoned samples, which look like their source classes, so it gives
     foreign samples moderate densities and its S_ND is low; flagged below beta_ND = 0.6.
     Scale (the text gives none): nats per feature dimension (Eq. 3 / d), expressed in units of
     the per-dimension standardised features, i.e. plus mean_j log sigma_j where sigma_j is
     dimension j's std over the training set (the log-Jacobian of z -> z / sigma; zero when
     `standardize: true`). This makes S_ND invariant to the backbone's feature scale, on which a
     raw per-dimension NLL shifts by log(scale). `nd_units: raw` drops that term. On digits the
     non-target classes of a clean and a BadNets run score 3.8 to 127, the BadNets target -3.0: 0.6 sits
     in the gap; the threshold is a calibration, not a paper value on a known scale.
   - `nd_score: foreign_share` (our reconstruction of the same premise, not Eq. 3): S_ND(y) =
     the share of the samples not labeled y whose most likely class other than their own,
     argmax_{c != y_i} log p_c(z_i), is y. Sec. 4.4's premise is that the target class's flow
     "will assign moderate densities to many foreign examples"; the share counts those examples
     directly, is a fraction whatever the feature scale (about 1 / (C - 1) for a clean class),
     and is not dominated by the few far samples that make Eq. 3's mean NLL run to thousands of
     nats on digits. Flagged ABOVE `beta_share` (0.37: between the largest clean-class share we
     measured, 0.33 on digits, and the smallest target share, 0.42 under Blended on the 20k
     cifar10-jpeg75 scale; see docs/fidelity.md).
   - `nd_score: consistency` (the previous default, our reconstruction): the share of class y's own
     samples that argmax_k log p_k assigns to y (no class prior), flagged below beta_ND. Those
     samples trained p_y, so memorisation makes every class look consistent.
   Every reading is logged in `extra` (`s_nd_foreign_nll`, `s_nd_foreign_nll_raw`,
   `s_nd_foreign_share`, `s_nd_consistency`); no detection score uses a class-frequency prior.
   - disruptive: v_y(z) = max over other classes of log p (Eq. 4); mu_y = the minimum of a 30-bin
     histogram of class y's v values left of the `lam` point of its range; S_D(y) = the share
     below mu_y (Eq. 5). The text says both "exceeds beta_D" and "less than beta_D"; S_D is an
     outlier mass (about 0 on clean classes), so we flag S_D > beta_D (`sd_direction: gt`,
     the side of the threshold clean classes never reach; "lt" is the other reading).
4. Poisoning score s_y(z) = log p_y(z) - max_{y' != y} log p_y'(z) (Eq. 6, in logs). In a flagged
   class, the `alpha` share most suspicious becomes D_P (non-disruptive: lowest score;
   disruptive: highest), the `alpha` share least suspicious stays clean, the middle is ignored
   (removed) (Sec. 4.6).
5. D_P is relabeled to argmax_{y' != y} p_y'(z) in the non-disruptive case (Eq. 7) and removed in
   the disruptive case (Table 2: relabeling only occurs for non-disruptive attacks). Then the
   shared retrain.

`cross_fit` (our option, off by default): with `nd_score: consistency` a flow scores the very
samples it was fitted on. With `cross_fit: true` each class gets two flows, one per random half;
a sample's density under its own class comes from the flow of the other half, and under any other
class from the mixture of both (the same number of optimisation steps in total).
"""

from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn.functional as F

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome, Verdict
from backdoor_bench.errors import ConfigError
from backdoor_bench.figures import foreign_density_histograms
from backdoor_bench.training.fit import extract_features
from backdoor_bench.training.flows import fit_flow, log_density_matrix, make_flow

log = logging.getLogger(__name__)

ND_SCORES = ("foreign_nll", "foreign_share", "consistency")


def standardize(h: torch.Tensor) -> torch.Tensor:
    """L2-normalise each feature vector, then standardise every dimension over the set."""
    z = F.normalize(h.float(), dim=1)
    return (z - z.mean(0)) / z.std(0).clamp_min(1e-6)


def mean_log_std(z: torch.Tensor) -> float:
    """mean_j log sigma_j over the feature dimensions (sigma_j: dimension j's std over the set,
    floored at 1e-6): the per-dimension log-Jacobian of z -> z / sigma."""
    return float(z.float().std(0).clamp_min(1e-6).log().mean())


def foreign_nll(L: torch.Tensor, y: torch.Tensor, dim: int = 1, log_std: float = 0.0) -> torch.Tensor:
    """Eq. 3 per dimension: the mean NLL of class c's flow over the samples not labeled c, divided
    by the feature dimension `dim`, plus `log_std` (mean_log_std of the features: the NLL of the
    features divided by their per-dimension std; 0 keeps the raw units)."""
    C = L.shape[1]
    nan = torch.tensor(float("nan"))
    return torch.stack([-L[y != c, c].mean() / dim + log_std if (y != c).any() else nan for c in range(C)])


def foreign_share(L: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The `foreign_share` reading (our reconstruction, not Eq. 3): per class c, the share of the
    samples not labeled c whose most likely class other than their own is c."""
    C = L.shape[1]
    best = foreign_argmax(L, y)
    nan = torch.tensor(float("nan"))
    return torch.stack([(best[y != c] == c).float().mean() if (y != c).any() else nan for c in range(C)])


def foreign_argmax(L: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """argmax over classes c != y_i of log p_c(z_i): Eq. 7's relabeling target."""
    return L.scatter(1, y[:, None], float("-inf")).argmax(1)


def label_consistency(L: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The `consistency` reading (our reconstruction, not the paper's): the share of class c's samples that the generative
    classifier argmax_k log p_k(z) assigns to c (no class prior)."""
    C = L.shape[1]
    pred = L.argmax(1)
    return torch.stack(
        [(pred[y == c] == c).float().mean() if (y == c).any() else torch.tensor(float("nan")) for c in range(C)]
    )


def foreign_max(L: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """v(z_i) = max over classes c != y_i of log p_c(z_i) (Eq. 4, in logs)."""
    return L.scatter(1, y[:, None], float("-inf")).max(1).values


def histogram_valley(v: torch.Tensor, lam: float = 0.75, bins: int = 30) -> float:
    """mu: the centre of the emptiest of `bins` equal-width bins left of min + lam * (max - min)
    (Eq. 5's step iii; the leftmost such bin on ties)."""
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    counts = torch.histc(v.float(), bins=bins, min=lo, max=hi)
    width = (hi - lo) / bins
    centres = lo + width * (torch.arange(bins) + 0.5)
    left = centres < lo + lam * (hi - lo)
    if not left.any():
        return lo
    # ties: the leftmost bin. (Known risk: empty bins among far-left outliers could then hide the
    # valley of a bimodal class; taking the rightmost instead flagged clean toy classes.)
    i = int(torch.where(left, counts, torch.full_like(counts, float("inf"))).argmin())
    return float(centres[i])


def d_scores(L: torch.Tensor, y: torch.Tensor, lam: float = 0.75, bins: int = 30):
    """(S_D per class, mu per class): the share of class c's samples whose foreign maximum v lies
    below the histogram valley mu_c (Eq. 5)."""
    v = foreign_max(L, y)
    s, mus = [], []
    for c in range(L.shape[1]):
        vc = v[y == c]
        mu = histogram_valley(vc, lam, bins) if len(vc) else float("nan")
        mus.append(mu)
        s.append(float((vc < mu).float().mean()) if len(vc) else float("nan"))
    return torch.tensor(s), torch.tensor(mus)


def poisoning_score(L: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log s_y(z) = log p_y(z) - max_{y' != y} log p_y'(z) (Eq. 6)."""
    return L.gather(1, y[:, None]).squeeze(1) - foreign_max(L, y)


class FlowRelabel(Defense):
    """Args: `variant` (`full`: SSL features; `supervised`: the backdoored model's, Table 3),
    `beta_nd` (0.6), `beta_d` (0.05), `lam` (0.75), `alpha` (0.15), `sd_direction` (gt | lt),
    `nd_score` (foreign_nll | foreign_share | consistency), `nd_units` (standardized | raw: the
    scale of foreign_nll), `beta_share` (0.37, the threshold of `nd_score: foreign_share`),
    `standardize` (false), `bins` (30), `cross_fit` (false), `flow` (hidden, transforms, epochs,
    batch_size, lr, betas)."""

    def __init__(
        self,
        name: str = "flow_relabel",
        variant: str = "full",
        beta_nd: float = 0.6,
        beta_d: float = 0.05,
        lam: float = 0.75,
        alpha: float = 0.15,
        sd_direction: str = "gt",
        nd_score: str = "foreign_nll",
        nd_units: str = "standardized",
        beta_share: float = 0.37,
        standardize: bool = False,
        bins: int = 30,
        cross_fit: bool = False,
        flow: dict | None = None,
        **kw,
    ):
        super().__init__(name=name, **kw)
        if variant not in ("full", "supervised"):
            raise ConfigError(f"defense.variant={variant!r} is unknown: use full (SSL features) or supervised")
        if sd_direction not in ("gt", "lt"):
            raise ConfigError(f"defense.sd_direction={sd_direction!r} is unknown: use gt or lt")
        if nd_score not in ND_SCORES:
            raise ConfigError(
                f"defense.nd_score={nd_score!r} is unknown: use foreign_nll (Eq. 3), foreign_share or consistency"
            )
        if nd_units not in ("standardized", "raw"):
            raise ConfigError(f"defense.nd_units={nd_units!r} is unknown: use standardized or raw")
        if not 0 < float(alpha) <= 0.5:
            raise ConfigError(
                f"defense.alpha={alpha} must be in (0, 0.5]: the share of a flagged class called "
                "poisoned (and as many called clean)"
            )
        self.variant, self.beta_nd, self.beta_d, self.lam, self.alpha = (
            variant,
            float(beta_nd),
            float(beta_d),
            float(lam),
            float(alpha),
        )
        self.sd_direction, self.nd_score, self.nd_units = sd_direction, nd_score, nd_units
        self.beta_share = float(beta_share)
        self.standardize, self.bins, self.cross_fit = bool(standardize), int(bins), bool(cross_fit)
        self.flow = {
            "hidden": 512,
            "transforms": 2,
            "epochs": 50,
            "batch_size": 16,
            "lr": 1e-3,
            "betas": [0.9, 0.99],
            **(flow or {}),
        }

    def features(self, ctx: DefenseContext) -> torch.Tensor:
        if self.variant == "supervised":
            model = copy.deepcopy(ctx.backdoored_model())
        else:
            model = ctx.ssl_backbone()
        h = extract_features(model, ctx.train.x, device=ctx.device).float()
        return standardize(h) if self.standardize else h

    def run(self, ctx: DefenseContext) -> Outcome:
        z, y, C = self.features(ctx), ctx.train.y, ctx.train.num_classes
        epochs = ctx.stage_length(int(self.flow["epochs"]))
        spec = {
            "variant": self.variant,
            "standardize": self.standardize,
            "cross_fit": self.cross_fit,
            "flow": dict(self.flow),
            "epochs": epochs,
            "seed": ctx.seed,
        }
        L = ctx.cached(
            "flow_log_densities",
            spec,
            lambda: {"L": self.log_densities(z, y, C, ctx.seed, epochs, ctx.device)},
        )["L"]
        verdict, extra, v, mus, flagged = self.decide(L, y, z, epochs)
        self._figure(ctx, v, y, mus, flagged)
        return Outcome(model=ctx.retrain(verdict), verdict=verdict, extra=extra)

    def cleanse(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        seed: int = 0,
        epochs: int | None = None,
        device="cpu",
    ):
        """Steps 2-5 on features `z` with given labels `y`, the flows fitted on `device`:
        (verdict, extra, v, mu, flagged classes)."""
        epochs = int(epochs or self.flow["epochs"])
        return self.decide(self.log_densities(z, y, num_classes, seed, epochs, device), y, z, epochs)

    def nd_scores(self, L: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """S_ND per class under every reading: Eq. 3 per dimension in standardised units and in the
        raw units of `z`, the foreign share and the label consistency."""
        d = z.shape[1]
        return {
            "foreign_nll": foreign_nll(L, y, d, mean_log_std(z)),
            "foreign_nll_raw": foreign_nll(L, y, d),
            "foreign_share": foreign_share(L, y),
            "consistency": label_consistency(L, y),
        }

    def decide(self, L: torch.Tensor, y: torch.Tensor, z: torch.Tensor, epochs: int):
        """Steps 3-5 from the log-density matrix L [N, C] of features `z`:
        (verdict, extra, v, mu, flagged classes)."""
        readings = self.nd_scores(L, y, z)
        key = self.nd_score
        if key == "foreign_nll" and self.nd_units == "raw":
            key = "foreign_nll_raw"
        s_nd = readings[key]
        s_d, mus = d_scores(L, y, self.lam, self.bins)
        nd_flag = s_nd > self.beta_share if key == "foreign_share" else s_nd < self.beta_nd
        d_flag = (s_d > self.beta_d) if self.sd_direction == "gt" else (s_d < self.beta_d)
        d_flag &= ~nd_flag  # the non-disruptive test comes first (Sec. 4.4)
        score = poisoning_score(L, y)
        kept, labels = torch.ones(len(y), dtype=torch.bool), y.clone()
        suspicion = torch.full((len(y),), float("nan"))
        foreign = foreign_argmax(L, y)
        for c in (nd_flag | d_flag).nonzero().flatten().tolist():
            idx = (y == c).nonzero().flatten()
            sus = -score[idx] if nd_flag[c] else score[idx]  # higher = more suspicious
            suspicion[idx] = sus
            order = idx[torch.argsort(sus, descending=True, stable=True)]
            n = int(round(self.alpha * len(idx)))
            poisoned, ignored = order[:n], order[n : len(idx) - n]
            kept[ignored] = False
            if nd_flag[c]:
                labels[poisoned] = foreign[poisoned]
            else:
                kept[poisoned] = False
        log.info(
            "flow_relabel: S_ND (%s) %s; S_D %s",
            key,
            [round(float(v), 3) for v in s_nd],
            [round(float(v), 3) for v in s_d],
        )
        log.info(
            "flow_relabel: ND-flagged %s, D-flagged %s; %d relabeled, %d removed",
            nd_flag.nonzero().flatten().tolist(),
            d_flag.nonzero().flatten().tolist(),
            int((kept & (labels != y)).sum()),
            int((~kept).sum()),
        )
        extra = {
            "s_nd": s_nd.tolist(),
            "nd_reading": key,
            **{f"s_nd_{k}": v.tolist() for k, v in readings.items()},
            "feature_mean_log_std": mean_log_std(z),
            "feature_dim": int(z.shape[1]),
            "s_d": s_d.tolist(),
            "mu": mus.tolist(),
            "nd_flagged": nd_flag.nonzero().flatten().tolist(),
            "d_flagged": d_flag.nonzero().flatten().tolist(),
            "flow_epochs": epochs,
        }
        return (
            Verdict(kept=kept, labels=labels, scores=suspicion),
            extra,
            foreign_max(L, y),
            mus,
            nd_flag | d_flag,
        )

    def log_densities(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        seed: int,
        epochs: int,
        device="cpu",
    ) -> torch.Tensor:
        """L[i, c] = log p_c(z_i) from one flow per class (Sec. 4.3), or with `cross_fit` from two
        flows per class fitted on random halves (see the module docstring)."""
        f = self.flow

        def fitted(zc: torch.Tensor, s: int):
            torch.manual_seed(s)
            flow = make_flow(z.shape[1], int(f["hidden"]), int(f["transforms"]))
            nll = fit_flow(flow, zc, epochs, int(f["batch_size"]), float(f["lr"]), f["betas"], s, device)
            return flow, nll[-1]

        cols = []
        for c in range(num_classes):
            idx = (y == c).nonzero().flatten()
            if not self.cross_fit:
                flow, nll = fitted(z[idx], seed + c)
                cols.append(log_density_matrix([flow], z)[:, 0])
                log.info(
                    "flow for class %d: %d samples, NLL %.2f after %d epochs",
                    c,
                    len(idx),
                    nll,
                    epochs,
                )
                continue
            halves = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed + c))].tensor_split(2)
            flows = [fitted(z[h], seed + c + 1000 * k) for k, h in enumerate(halves)]
            L2 = log_density_matrix([fl for fl, _ in flows], z)  # [N, 2]
            col = L2.logsumexp(1) - math.log(2)  # the mixture, for every sample outside class c
            col[halves[0]], col[halves[1]] = (
                L2[halves[0], 1],
                L2[halves[1], 0],
            )  # held-out for its own samples
            cols.append(col)
            log.info(
                "flows for class %d: 2 x %d samples, NLL %.2f / %.2f after %d epochs, held-out NLL %.2f",
                c,
                len(halves[0]),
                flows[0][1],
                flows[1][1],
                epochs,
                float(-col[idx].mean()),
            )
        return torch.stack(cols, 1)

    def _figure(self, ctx: DefenseContext, v, y, mus, flagged) -> None:
        """The flows paper's Figure 3: per class, the histogram of the maximum foreign log-density v."""
        ctx.figure("foreign_density", lambda path: foreign_density_histograms(v, y, mus, flagged, path, self.bins))
