"""The sample-distinguishment (SD) module of Chen, Wu and Wang ("Effective Backdoor Defense by
Exploiting Sensitivity of Poisoned Samples", NeurIPS 2022, Sec. 3.2 and App. A.1),
shared by D-ST and D-BR.

1. The sensitivity model (`model`: the official code's CIFAR ResNet-18, with the 3x3/2 max-pool
   after its stem, by default; null: the run's model): a fresh model trained briefly WITHOUT
   augmentation (2 epochs, SGD 0.01 on a 100-epoch cosine), then fine-tuned 10 epochs with the class-centroid separation loss
   (`losses.centroid_separation`, the code's "L_intra").
2. FCT (Eq. 1): Delta(x) = ||phi(x) - phi(tau(x))||^2 / d on its penultimate features phi, with
   tau a random rotation (+-180 deg) then a random translation (up to 20% per axis), nearest
   neighbour, black fill. Poisoned samples move far more than clean ones.
3. The split by rank (the official code's reading of Sec. 3.2): the bottom `clean_ratio` share is the clean split D_c
   (`clean_split: per_class`, our addition: the bottom share of every labeled class),
   the top `poison_ratio` share the poisoned split D_p, the rest uncertain D_u.

`metric` swaps FCT for the metrics of Fig. 4 (higher = more suspicious for all of them):
`spectral` (Spectral Signatures' score on the same sensitivity model's features), `sce` (DBD's
symmetric cross-entropy after its warm-up: the shared SimCLR backbone plus a linear head trained
with SCE), `lga` (ABL: a model trained with local gradient ascent; low loss = suspicious). The
split is cached by its config, so D-ST, D-BR and their ablations of one attack share it.
"""

from __future__ import annotations

import logging
import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from backdoor_bench.defenses.base import DefenseContext
from backdoor_bench.defenses.spectral import spectral_scores
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.fit import extract_features, over_batches, per_sample_loss
from backdoor_bench.training.isolation import lga_isolation_scores
from backdoor_bench.training.losses import centroid_separation, get_loss
from backdoor_bench.training.optim import configure_optimizers
from backdoor_bench.training.supervised import Supervised

log = logging.getLogger(__name__)

METRICS = ("fct", "spectral", "sce", "lga")
CLEAN, UNCERTAIN, POISONED = 0, 1, 2


def _sample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def rotate_then_shift(x: torch.Tensor, degrees: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per image, torchvision's `rotate(x, degrees[i])` (counter-clockwise about the centre) and then
    `affine(translate=shift[i])` (pixels, right and down), both nearest neighbour with black fill:
    what the rotation pushed out of the frame stays out."""
    n, _, h, w = x.shape
    a = torch.deg2rad(degrees.float())
    cos, sin, zero = torch.cos(a), torch.sin(a), torch.zeros(n)
    rotation = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    t = -2 * shift.float() / torch.tensor([w, h])  # the output pixel p samples p - shift
    one = torch.ones(n)
    translation = torch.stack([torch.stack([one, zero, t[:, 0]], 1), torch.stack([zero, one, t[:, 1]], 1)], 1)
    return _sample(_sample(x, rotation), translation)


def rotate_translate(
    x: torch.Tensor, generator: torch.Generator, degrees: float = 180.0, translate: float = 0.2
) -> torch.Tensor:
    """The transformation tau of App. A.1 on a float batch [N, C, H, W]: RandomRotation(+-`degrees`), then
    RandomAffine(translate=(`translate`, `translate`)): per image an angle uniform in +-`degrees`
    and a shift of round(uniform(+-`translate` x size)) pixels per axis (`rotate_then_shift`)."""
    n, _, h, w = x.shape
    degrees_ = (torch.rand(n, generator=generator) * 2 - 1) * degrees
    shift = torch.round((torch.rand(n, 2, generator=generator) * 2 - 1) * translate * torch.tensor([w, h]))
    return rotate_then_shift(x, degrees_, shift)


@torch.no_grad()
def fct(
    model: torch.nn.Module,
    x: torch.Tensor,
    seed: int = 0,
    draws: int = 1,
    batch_size: int = 512,
    device="cpu",
    **transform,
) -> torch.Tensor:
    """Eq. 1 for uint8 images `x`, averaged over `draws` random transformations (fixed `seed`):
    ||phi(x) - phi(tau(x))||^2 / d with phi = `model.features`, the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)

    def step(i, xb):
        xf = xb.float().div_(255)
        f = model.features(xf).float()
        total = torch.zeros(len(xb), device=xb.device)
        for _ in range(draws):
            moved = model.features(rotate_translate(xf, generator, **transform)).float()
            total += (f - moved).pow(2).mean(1)
        return total / draws

    return over_batches(model, x, step, batch_size, device)


def rank_split(
    scores: torch.Tensor, clean_ratio: float, poison_ratio: float, seed: int = 0, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """int8 [N] groups by rank (as the official code ranks): the floor(N x `clean_ratio`)
    lowest scores CLEAN, the floor(N x `poison_ratio`) highest POISONED, the rest UNCERTAIN.
    Ties are broken at random (`seed`), not by index: samples whose features do not move at all
    (FCT exactly 0, e.g. all-zero features) would otherwise fill the clean split in dataset order,
    i.e. with the first classes only. With `labels` (sd.clean_split=per_class, OUR addition), the
    clean split is the floor(n_c x `clean_ratio`) lowest of each labeled class c instead, so every
    class keeps a share of it; the poisoned split stays the global top (and wins a tie of both)."""
    n = len(scores)
    n_c, n_p = math.floor(n * clean_ratio), math.floor(n * poison_ratio)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    order = perm[torch.sort(scores.float()[perm], stable=True).indices]
    groups = torch.full((n,), UNCERTAIN, dtype=torch.int8)
    if labels is None:
        groups[order[:n_c]] = CLEAN
    else:
        y = labels.cpu()[order]
        for c in y.unique():
            members = order[y == c]  # this class, lowest score first
            groups[members[: math.floor(len(members) * clean_ratio)]] = CLEAN
    groups[order[n - n_p :]] = POISONED
    return groups


class _CentroidSeparation(pl.LightningModule):
    """The SD model's fine-tune (App. A.1, the official code's L_intra): minimise `centroid_separation` of the
    penultimate features; the head gets no gradient. A fresh SGD at the same settings (the code
    resumes step 1's optimizer and cosine, whose lr is then 0.0099 instead of 0.01)."""

    def __init__(self, model: torch.nn.Module, optim: dict, schedule_epochs: int):
        super().__init__()
        self.model, self.optim, self.schedule_epochs = model, optim, schedule_epochs

    def training_step(self, batch, batch_idx):
        loss = centroid_separation(self.model.features(batch["x"]), batch["y"])
        self.log("sd_separate/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["y"]))
        return loss

    def configure_optimizers(self):
        return configure_optimizers(self.model.backbone.parameters(), self.optim, self.schedule_epochs)


def plain(d) -> dict:
    """A config block as a plain dict (for cache keys and JSON)."""
    return OmegaConf.to_container(d, resolve=True) if isinstance(d, DictConfig) else dict(d or {})


def split_counts(groups: torch.Tensor, y: torch.Tensor | None = None, num_classes: int | None = None) -> dict:
    """The split's sizes, for results.json; with the given labels `y`, also the per-class make-up
    of the clean and poisoned splits (`clean_per_class`, `poisoned_per_class`: counts by given
    label), which shows a split that follows the class prior rather than the trigger."""
    out = {
        f"n_{k}": int((groups == v).sum())
        for k, v in (("clean", CLEAN), ("uncertain", UNCERTAIN), ("poisoned", POISONED))
    }
    if y is not None:
        c = int(num_classes or int(y.max()) + 1)
        for k, v in (("clean", CLEAN), ("poisoned", POISONED)):
            out[f"{k}_per_class"] = torch.bincount(y[groups == v].long(), minlength=c).tolist()
    return out


def validate_sd(sd: dict) -> None:
    arch = sd.get("model")
    if arch is not None and (not isinstance(arch, dict) or "_target_" not in arch):
        raise ConfigError(
            f"defense.sd.model={arch!r} must be null (the run's model) or a model config with its _target_ "
            "(e.g. {_target_: backdoor_bench.models.resnet.ResNet18, stem_pool: true})"
        )
    if sd.get("clean_split", "global") not in ("global", "per_class"):
        raise ConfigError(
            f"defense.sd.clean_split={sd['clean_split']!r} is unknown: use global (the paper) or per_class"
        )
    if sd["metric"] not in METRICS:
        raise ConfigError(f"defense.sd.metric={sd['metric']!r} is unknown: use one of {', '.join(METRICS)}")
    c, p = float(sd["clean_ratio"]), float(sd["poison_ratio"])
    if not (0 < c < 1 and 0 < p < 1 and c + p <= 1):
        raise ConfigError(
            f"defense.sd.clean_ratio={c} and poison_ratio={p} must be shares in (0, 1) that sum "
            "to at most 1 (the paper: 0.2 and 0.05)"
        )


def sensitivity_model(ctx: DefenseContext, sd: dict) -> torch.nn.Module:
    """Steps 1-2: brief training without augmentation, then the centroid-separation fine-tune."""
    model = ctx.new_model(architecture=sd.get("model"))  # None: the run's model
    optim, schedule = dict(sd["optimizer"]), int(sd["schedule_epochs"])
    bs = int(sd["batch_size"])
    epochs = ctx.stage_epochs(sd["epochs"], len(ctx.train), bs, int(sd.get("min_steps") or 0))
    separate = ctx.stage_epochs(sd["finetune_epochs"], len(ctx.train), bs, int(sd.get("finetune_min_steps") or 0))
    ctx.fit(
        "sd_train",
        Supervised(model, optim, schedule, channels_last=ctx.channels_last, log_prefix="sd_train"),
        ctx.train,
        epochs,
        augment=False,
        batch_size=int(sd["batch_size"]),
    )
    if int(sd["finetune_epochs"]) > 0:
        ctx.fit(
            "sd_separate",
            _CentroidSeparation(model, optim, schedule),
            ctx.train,
            separate,
            augment=False,
            batch_size=int(sd["batch_size"]),
        )
    return model


def _scores(ctx: DefenseContext, sd: dict) -> torch.Tensor:
    """Every training sample's suspicion under `sd.metric` (higher = more likely poisoned)."""
    x, y, metric = ctx.train.x, ctx.train.y, sd["metric"]
    if metric in ("fct", "spectral"):
        model = sensitivity_model(ctx, sd)
        if metric == "fct":
            return fct(model, x, seed=ctx.seed, draws=int(sd["draws"]), device=ctx.device, **dict(sd["transform"]))
        return spectral_scores(extract_features(model, x, device=ctx.device), y)
    if metric == "sce":  # DBD's warm-up (Huang et al., ICLR 2022, Sec. 4.4): SSL backbone, SCE head
        model = ctx.ssl_backbone()
        torch.manual_seed(ctx.seed)
        model.head.reset_parameters()
        d = dict(sd["sce"])
        epochs = ctx.stage_length(d["epochs"])
        ctx.fit(
            "sd_sce",
            Supervised(
                model,
                dict(d["optimizer"]),
                epochs,
                loss="sce",
                head_only=True,
                channels_last=ctx.channels_last,
                log_prefix="sd_sce",
            ),
            ctx.train,
            epochs,
        )
        return per_sample_loss(model, x, y, get_loss("sce"), device=ctx.device)
    d = dict(sd["lga"])  # ABL's loss-guided isolation: the lowest losses are the poison
    return lga_isolation_scores(
        ctx.fit,
        ctx.new_model(),
        ctx.train,
        optimizer=dict(d["optimizer"]),
        epochs=ctx.stage_length(d["epochs"]),
        gamma=float(d["gamma"]),
        channels_last=ctx.channels_last,
        device=ctx.device,
        name="sd_lga",
    )


def sample_split(ctx: DefenseContext, sd: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [N], groups int8 [N]) of the SD module, cached by `sd`: D-ST, D-BR and their
    ablations on one poisoned set compute it once."""
    validate_sd(sd)
    spec = {
        k: v for k, v in sd.items() if k not in ("clean_ratio", "poison_ratio", "clean_split")
    }  # the scores' config
    spec["tau"] = "rotate_then_shift"  # torchvision's order: the rotation's lost corners stay black
    payload = ctx.cached("sd_scores", {"sd": spec, "seed": ctx.seed}, lambda: {"scores": _scores(ctx, sd)})
    scores = payload["scores"]
    per_class = sd.get("clean_split", "global") == "per_class"
    groups = rank_split(
        scores, float(sd["clean_ratio"]), float(sd["poison_ratio"]), ctx.seed, ctx.train.y if per_class else None
    )
    n_low = int((scores == scores.min()).sum())
    if n_low > 1 and n_low >= 0.01 * len(scores):
        log.warning(
            "%d samples share the lowest %s score (%.3g): the clean split is drawn from them at random "
            "(a sensitivity model whose features do not react to tau?)",
            n_low,
            sd["metric"],
            float(scores.min()),
        )
    log.info(
        "SD split (%s): %d clean, %d uncertain, %d poisoned",
        sd["metric"],
        int((groups == CLEAN).sum()),
        int((groups == UNCERTAIN).sum()),
        int((groups == POISONED).sum()),
    )
    return scores, groups
