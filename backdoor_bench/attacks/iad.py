"""Input-aware dynamic backdoor, IAD (Nguyen & Tran, "Input-Aware Dynamic Backdoor Attack",
NeurIPS 2020): a generator makes a different trigger for every image, trained jointly with the
classifier.

Following the paper's Sec. 3: a pattern generator g and a mask generator m (encoder-decoder
networks) give the poisoned image x + (g(x) - x) * m(x), the mask thresholded to near-binary
values (tanh(20 m - 10)). Training has two stages:

1. mask pre-training (`clean_train_epochs`, BackdoorBench's 25) on the clean set: the mask
   density term `lambda_norm` x mean(relu(m(x) - mask_density)) keeps about `mask_density` of
   the pixels, the diversity term `lambda_div` x ||x - x'|| / ||m(x) - m(x')|| makes masks of
   different images differ (RMS distances per sample, `diversity_loss`);
2. joint training of the classifier and the pattern generator (the mask frozen), for the run's
   `trainer.max_epochs`: in every batch the first `poison_rate` share is poisoned with its own
   trigger and relabelled, the next `cross_ratio` times as many are cross samples (the image with
   the trigger of another image, label kept: a trigger works only on the image it was made
   for), the rest stay clean; loss = cross-entropy + `lambda_div` x the diversity term on the
   patterns.

Defaults are BackdoorBench's (config/attack/inputaware/default.yaml): lr 0.01 for the classifier
(SGD, momentum 0.9, weight decay 5e-4), the pattern generator and the mask generator (Adam,
betas (0.5, 0.9)), with step schedules at their milestones; mask density 0.032, lambda_div 1,
lambda_norm 100, 10% poisoned and as many cross samples per batch. The cross samples take the
next image of the (shuffled) batch as their trigger source; the diversity pairs likewise.
The generators halve the image 3 times with 32 base channels on images of 32 px or more, else
twice with 16 (16 px and 8 px digits), as BackdoorBench's CIFAR and MNIST generators.

The stored training set (what the defenses see) is, as BackdoorBench's, regenerated once with the
final generators: `poison_rate` of the samples poisoned and relabelled, as many cross samples
(`cover`) with the trigger of another cross sample.
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from backdoor_bench.attacks.trained import GeneratorAttack, Normalized, down_levels
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.optim import configure_optimizers

log = logging.getLogger(__name__)

EPS = 1e-7  # the paper's code's epsilon in the squashing and the diversity ratio


def squash(t: torch.Tensor) -> torch.Tensor:
    """tanh squashed into [0, 1] (just inside: the paper's code divides by 2 + 1e-7)."""
    return torch.tanh(t) / (2 + EPS) + 0.5


def blend(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The poisoned image: x where the mask is 0, the pattern where it is 1."""
    return x + (pattern - x) * mask


def diversity_loss(x1: torch.Tensor, x2: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """||x1 - x2|| / ||g1 - g2|| per sample (RMS over channels and pixels), averaged: small when
    different inputs get different patterns (or masks) g."""
    dx = (x1 - x2).pow(2).mean((1, 2, 3)).sqrt()
    dg = (g1 - g2).pow(2).mean((1, 2, 3)).sqrt()
    return (dx / (dg + EPS)).mean()


def mask_density_loss(mask: torch.Tensor, density: float) -> torch.Tensor:
    """mean(relu(mask - density)): the mask's share of pixels above `density` is penalised."""
    return F.relu(mask - density).mean()


def batch_poison_count(rate: float, batch: int, generator: torch.Generator | None = None) -> int:
    """Poisoned samples in a batch: int(rate x batch); below one, one with probability rate x batch
    (BackdoorBench's `generalize_to_lower_pratio`, so low rates still poison)."""
    expected = rate * batch
    if expected >= 1:
        return int(expected)
    return int(float(torch.rand((), generator=generator)) < expected)


def conv_block(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, momentum=0.05)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


def encoder_decoder(cin: int, cout: int, width: int, levels: int) -> nn.Sequential:
    """Two conv blocks and a 2x max-pool per level (widths `width` x 1, 2, 4, ...), a middle block,
    then per level a bilinear 2x upsampling and two conv blocks back down to `cout` (no ReLU last)."""
    widths = [width * 2**i for i in range(levels)]
    layers, c = [], cin
    for w in widths:
        layers += [conv_block(c, w), conv_block(w, w), nn.MaxPool2d(2)]
        c = w
    layers.append(conv_block(c, c))
    for i in reversed(range(levels)):
        nxt = widths[i - 1] if i else cout
        layers += [nn.Upsample(scale_factor=2, mode="bilinear"), conv_block(c, c), conv_block(c, nxt, relu=i > 0)]
        c = nxt
    return nn.Sequential(*layers)


class IADGenerator(Normalized):
    """The pattern generator (`channels` out) and the mask generator (1 out) on normalised inputs."""

    def __init__(self, channels: int, size: int, mean, std, width: int | None = None):
        super().__init__(mean, std)
        levels = down_levels(size, 3 if size >= 32 else 2)
        width = int(width or (32 if levels >= 3 else 16))
        self.pattern_net = encoder_decoder(channels, channels, width, levels)
        self.mask_net = encoder_decoder(channels, 1, width, levels)

    def patterns(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image patterns in [0, 1]."""
        return squash(self.pattern_net(self.normalize(x)))

    def masks(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image masks `[N, 1, H, W]`, thresholded towards 0 or 1."""
        return squash(20 * squash(self.mask_net(self.normalize(x))) - 10)

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """`x` with the trigger made for `source` (default: `x` itself; another image: a cross sample)."""
        s = x if source is None else source
        return blend(x, self.patterns(s), self.masks(s))


def _adam(params, lr: float, milestones, gamma: float) -> dict:
    return configure_optimizers(
        params,
        {"name": "adam", "lr": lr, "betas": (0.5, 0.9), "schedule": "step", "milestones": milestones, "gamma": gamma},
        1,
    )


class MaskTraining(pl.LightningModule):
    """Stage 1: the mask generator alone, on clean batches (pairs: each image and the next)."""

    def __init__(self, gen: IADGenerator, density: float, lambda_norm: float, lambda_div: float, optim: dict):
        super().__init__()
        self.gen, self.density, self.lambda_norm, self.lambda_div, self.optim = (
            gen,
            density,
            lambda_norm,
            lambda_div,
            optim,
        )

    def training_step(self, batch, batch_idx):
        x = batch["x"]
        x2 = x.roll(-1, 0)
        m1, m2 = self.gen.masks(x), self.gen.masks(x2)
        norm = mask_density_loss(m1, self.density)
        div = diversity_loss(self.gen.normalize(x), self.gen.normalize(x2), m1, m2)
        self.log_dict(
            {"iad_mask/norm": norm, "iad_mask/div": div, "iad_mask/density": m1.mean()},
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(x),
        )
        return self.lambda_norm * norm + self.lambda_div * div

    def configure_optimizers(self):
        return _adam(self.gen.mask_net.parameters(), **self.optim)


class IADTraining(pl.LightningModule):
    """Stage 2: the classifier and the pattern generator together (the mask generator frozen)."""

    def __init__(self, model: nn.Module, gen: IADGenerator, attack: IAD, rate: float, optim_c: dict, optim_g: dict):
        super().__init__()
        self.model, self.gen = model, gen
        self.attack, self.rate, self.optim_c, self.optim_g = attack, rate, optim_c, optim_g
        self.automatic_optimization = False
        gen.mask_net.requires_grad_(False)

    def on_train_epoch_start(self):
        self.gen.mask_net.eval()  # frozen after stage 1, BatchNorm statistics included

    def training_step(self, batch, batch_idx):
        x, y = batch["x"], batch["y"]
        n = batch_poison_count(self.rate, len(x))
        nc = min(int(round(n * self.attack.cross_ratio)), len(x) - n)
        x2 = x.roll(-1, 0)  # each image's trigger source for the cross samples: the next image
        p_bd = self.gen.patterns(x[:n])
        poisoned = blend(x[:n], p_bd, self.gen.masks(x[:n]))
        src = x2[n : n + nc]
        p_cross = self.gen.patterns(src)
        cross = blend(x[n : n + nc], p_cross, self.gen.masks(src))
        inputs = torch.cat([poisoned, cross, x[n + nc :]])
        targets = torch.cat([self.attack.target_label(y[:n]), y[n:]])
        logits = self.model(inputs)
        ce = F.cross_entropy(logits, targets)
        k = min(n, nc)
        div = (
            diversity_loss(
                self.gen.normalize(x[:k]),
                self.gen.normalize(src[:k]),
                self.gen.normalize(p_bd[:k]),
                self.gen.normalize(p_cross[:k]),
            )
            if k
            else ce.new_zeros(())
        )
        loss = ce + self.attack.lambda_div * div
        opt_c, opt_g = self.optimizers()
        opt_c.zero_grad()
        opt_g.zero_grad()
        self.manual_backward(loss)
        opt_c.step()
        opt_g.step()
        hit = (logits.argmax(1) == targets).float()
        logged = {"iad/loss": loss, "iad/div": div}
        if n + nc < len(x):
            logged["iad/acc"] = hit[n + nc :].mean()
        if n:
            logged["iad/asr"] = hit[:n].mean()
        self.log_dict(
            logged,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(x),
        )

    def on_train_epoch_end(self):
        for s in self.lr_schedulers():
            s.step()

    def configure_optimizers(self):
        c = configure_optimizers(self.model.parameters(), self.optim_c, 1)
        g = _adam(self.gen.pattern_net.parameters(), **self.optim_g)
        return [c["optimizer"], g["optimizer"]], [c["lr_scheduler"]["scheduler"], g["lr_scheduler"]["scheduler"]]


class IAD(GeneratorAttack):
    """Args (beyond `Attack`'s; `poison_rate` is the share of every training batch poisoned):
    `cross_ratio` (cross samples per poisoned one), `lambda_div`, `lambda_norm`, `mask_density`,
    `clean_train_epochs` (mask pre-training, at most `trainer.max_stage_epochs`), `lr_G`, `lr_C`,
    `lr_M` and their step schedules `milestones_G`, `milestones_C`, `milestones_M` (x `gamma`),
    `width` (the generators' base channels; null: 32 on images of 32 px or more, else 16)."""

    stored_set = (
        "regenerated once with the final generators (BackdoorBench's bd_train): data.n_poisoned samples "
        "poisoned and relabelled, data.n_cover cross samples (another image's trigger, label kept); training "
        "poisoned every batch afresh"
    )

    def __init__(
        self,
        cross_ratio: float = 1.0,
        lambda_div: float = 1.0,
        lambda_norm: float = 100.0,
        mask_density: float = 0.032,
        clean_train_epochs: int = 25,
        lr_G: float = 0.01,
        lr_C: float = 0.01,
        lr_M: float = 0.01,
        milestones_G=(200, 300, 400, 500),
        milestones_C=(100, 200, 300, 400),
        milestones_M=(10, 20),
        gamma: float = 0.1,
        width: int | None = None,
        **kw,
    ):
        super().__init__(**kw)
        self.cross_ratio, self.lambda_div, self.lambda_norm = float(cross_ratio), float(lambda_div), float(lambda_norm)
        self.mask_density, self.clean_train_epochs = float(mask_density), int(clean_train_epochs)
        self.lr = {"G": float(lr_G), "C": float(lr_C), "M": float(lr_M)}
        self.milestones = {"G": list(milestones_G), "C": list(milestones_C), "M": list(milestones_M)}
        self.gamma, self.width = float(gamma), width
        if min(self.lr.values()) <= 0 or self.cross_ratio < 0 or self.lambda_div < 0 or self.lambda_norm < 0:
            raise ConfigError("attack.lr_G, lr_C, lr_M must be > 0 and cross_ratio, lambda_div, lambda_norm >= 0")
        if not 0 < self.mask_density < 1 or self.clean_train_epochs < 1:
            raise ConfigError(
                f"attack.mask_density={mask_density} must be in (0, 1) and attack.clean_train_epochs >= 1"
            )
        if self.poison_rate * (1 + self.cross_ratio) > 1:
            raise ConfigError(
                f"attack.poison_rate={self.poison_rate} with cross_ratio={cross_ratio} asks for more than the "
                "whole batch: lower one of them"
            )

    def new_generator(self, data):
        return IADGenerator(data.shape[0], data.shape[-1], data.mean, data.std, self.width)

    def stage_lengths(self, tools):
        return {"mask_epochs": tools.stage_length(self.clean_train_epochs)}

    def _optim(self, key: str) -> dict:
        return {"lr": self.lr[key], "milestones": self.milestones[key], "gamma": self.gamma}

    def train_model(self, tools, data, model):
        gen = self.new_seeded_generator(tools, data)
        mask = MaskTraining(gen, self.mask_density, self.lambda_norm, self.lambda_div, self._optim("M"))
        tools.fit(mask, data, "iad_mask", max_epochs=self.stage_lengths(tools)["mask_epochs"])
        optim_c = {"name": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step", **self._optim("C")}
        rate = self.n_poison(len(data)) / max(1, len(data))
        tools.fit(IADTraining(model, gen, self, rate, optim_c, self._optim("G")), data, "iad")
        return gen

    def trigger(self, generator, x):
        return generator(x)

    def n_cover(self, n_poison, n_train):
        return int(round(n_poison * self.cross_ratio))

    def stamp_cover(self, x, index, generator):
        return self.on_uint8(lambda gen, xb, sb: gen(xb, sb), x, x.roll(-1, 0))
