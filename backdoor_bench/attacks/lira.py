"""LIRA (Doan, Lao, Zhao, Li, "LIRA: Learnable, Imperceptible and Robust Backdoor Attacks",
ICCV 2021): an autoencoder learns an image-dependent additive trigger jointly with the classifier.

Following the paper's Sec. 3: the trigger function is T(x) = clip(x + eps * g(x)) with g an
autoencoder ending in tanh, so the trigger is bounded by eps in L-inf (in the normalised input
space, as the authors' and BackdoorBench's code: eps x the channel's std in pixels). Stage I
(`joint_epochs`, 50) alternates, per batch, one Adam step (`lr_atk`) of the generator on
CE(f(T(x)), eta(y)) through the current classifier, and one SGD step (`lr`, momentum 0.9) of the
classifier on alpha x CE(f(x), y) + (1 - alpha) x CE(f(T'(x)), eta(y)) (`lira_loss`), where T'
is the generator as it was at the start of the epoch (the code's lagged copy). Stage II
(`finetune_epochs`) fine-tunes the classifier with the same loss and the generator fixed
(SGD `finetune_lr`, momentum 0.9, weight decay 5e-4, steps at `finetune_milestones`). Both stages
are capped by `trainer.max_stage_epochs`. Every sample of every batch is used clean and
triggered: there is no poison rate.

Defaults are BackdoorBench's config/attack/lira/cifar10.yaml and default.yaml: eps 0.01, alpha 0.5
(train and fine-tune), lr_atk 1e-4, lr 0.01, 50 joint epochs, 250 fine-tuning epochs (its
`test_epochs`) at 0.01 with steps at 50, 100, 150, 200 (x 0.1). The autoencoder is theirs in
form: stride-2 4x4 convolutions with 16, 32, 64, 128 channels and the mirrored transposed
convolutions, `down_levels(size, 4)` levels (4 on 32 px, 3 on 16 px digits, 2 on 8 px).

The stored training set (what the defenses see) is the clean one, `poison_rate` 0: BackdoorBench
stores none for LIRA (`bd_train=None`); the poisoned copies of training existed only per batch.
"""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from backdoor_bench.attacks.trained import GeneratorAttack, Normalized, down_levels
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.optim import configure_optimizers


def lira_loss(clean_logits, triggered_logits, y, y_target, alpha: float) -> torch.Tensor:
    """alpha x CE(f(x), y) + (1 - alpha) x CE(f(T(x)), eta(y)): the classifier's objective."""
    return alpha * F.cross_entropy(clean_logits, y) + (1 - alpha) * F.cross_entropy(triggered_logits, y_target)


class LIRAGenerator(Normalized):
    """The autoencoder trigger: `forward(x)` = clip(x + eps x std x tanh(ae(normalised x)), 0, 1)."""

    def __init__(self, channels: int, size: int, mean, std, eps: float):
        super().__init__(mean, std)
        self.eps = float(eps)
        widths = [16 * 2**i for i in range(down_levels(size, 4))]
        layers, c = [], channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 4, stride=2, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        for i in reversed(range(len(widths))):
            last = i == 0
            nxt = channels if last else widths[i - 1]
            layers.append(nn.ConvTranspose2d(c, nxt, 4, stride=2, padding=1))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(nxt), nn.ReLU()]
            c = nxt
        self.net = nn.Sequential(*layers)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """The additive trigger in pixels, within +-eps x std per channel."""
        return self.eps * self.std * self.net(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.noise(x)).clamp(0, 1)


class LIRATraining(pl.LightningModule):
    """Stage I: per batch a generator step, then a classifier step with the epoch-start generator."""

    def __init__(self, model: nn.Module, gen: LIRAGenerator, attack: LIRA):
        super().__init__()
        self.model, self.gen, self.attack = model, gen, attack
        self.lagged = copy.deepcopy(gen).requires_grad_(False)
        self.automatic_optimization = False

    def on_train_epoch_start(self):
        self.lagged.load_state_dict(self.gen.state_dict())
        self.lagged.eval()

    def training_step(self, batch, batch_idx):
        x, y = batch["x"], batch["y"]
        t = self.attack.target_label(y)
        opt_c, opt_g = self.optimizers()
        loss_g = F.cross_entropy(self.model(self.gen(x)), t)
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        with torch.no_grad():
            triggered = self.lagged(x)
        clean_logits, triggered_logits = self.model(x), self.model(triggered)
        loss_c = lira_loss(clean_logits, triggered_logits, y, t, self.attack.alpha)
        opt_c.zero_grad()  # also drops what the generator's step left on the classifier
        self.manual_backward(loss_c)
        opt_c.step()
        self.log_dict(
            {
                "lira/gen_loss": loss_g,
                "lira/loss": loss_c,
                "lira/acc": (clean_logits.argmax(1) == y).float().mean(),
                "lira/asr": (triggered_logits.argmax(1) == t).float().mean(),
            },
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(x),
        )

    def configure_optimizers(self):
        c = torch.optim.SGD(self.model.parameters(), lr=self.attack.lr, momentum=0.9)
        return [c, torch.optim.Adam(self.gen.parameters(), lr=self.attack.lr_atk)]


class LIRAFinetune(pl.LightningModule):
    """Stage II: the classifier alone, the generator fixed."""

    def __init__(self, model: nn.Module, gen: LIRAGenerator, attack: LIRA, epochs: int):
        super().__init__()
        self.model, self.gen, self.attack, self.epochs = model, gen.requires_grad_(False), attack, epochs

    def on_train_epoch_start(self):
        self.gen.eval()

    def training_step(self, batch, batch_idx):
        x, y = batch["x"], batch["y"]
        with torch.no_grad():
            triggered = self.gen(x)
        loss = lira_loss(self.model(x), self.model(triggered), y, self.attack.target_label(y), self.attack.alpha)
        self.log("lira_finetune/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def configure_optimizers(self):
        a = self.attack
        optim = {
            "name": "sgd",
            "lr": a.finetune_lr,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "step",
            "milestones": a.finetune_milestones,
            "gamma": a.gamma,
        }
        return configure_optimizers(self.model.parameters(), optim, self.epochs)


class LIRA(GeneratorAttack):
    """Args (beyond `Attack`'s; `poison_rate` only shapes the stored set, 0 by default): `eps`
    (the trigger's L-inf bound, normalised units), `alpha` (the clean loss's weight), `lr_atk`
    (the generator's Adam lr), `lr` (the classifier's in stage I), `joint_epochs`,
    `finetune_epochs` (0: no stage II), `finetune_lr`, `finetune_milestones`, `gamma`."""

    stored_set = (
        "the clean training set (BackdoorBench stores none for LIRA): every training batch was used clean "
        "and with the generator's trigger, never stored"
    )

    def __init__(
        self,
        eps: float = 0.01,
        alpha: float = 0.5,
        lr_atk: float = 1e-4,
        lr: float = 0.01,
        joint_epochs: int = 50,
        finetune_epochs: int = 250,
        finetune_lr: float = 0.01,
        finetune_milestones=(50, 100, 150, 200),
        gamma: float = 0.1,
        **kw,
    ):
        super().__init__(**kw)
        self.eps, self.alpha, self.lr_atk, self.lr = float(eps), float(alpha), float(lr_atk), float(lr)
        self.joint_epochs, self.finetune_epochs = int(joint_epochs), int(finetune_epochs)
        self.finetune_lr, self.finetune_milestones, self.gamma = (
            float(finetune_lr),
            list(finetune_milestones),
            float(gamma),
        )
        if self.eps <= 0 or not 0 <= self.alpha <= 1:
            raise ConfigError(f"attack.eps={eps} must be > 0 and attack.alpha={alpha} in [0, 1]")
        if min(self.lr_atk, self.lr, self.finetune_lr) <= 0 or self.joint_epochs < 1 or self.finetune_epochs < 0:
            raise ConfigError(
                "attack.lr_atk, lr, finetune_lr must be > 0, attack.joint_epochs >= 1, attack.finetune_epochs >= 0"
            )

    def new_generator(self, data):
        return LIRAGenerator(data.shape[0], data.shape[-1], data.mean, data.std, self.eps)

    def stage_lengths(self, tools):
        ft = tools.stage_length(self.finetune_epochs) if self.finetune_epochs else 0
        return {"joint_epochs": tools.stage_length(self.joint_epochs), "finetune_epochs": ft}

    def train_model(self, tools, data, model):
        gen = self.new_seeded_generator(tools, data)
        n = self.stage_lengths(tools)
        tools.fit(LIRATraining(model, gen, self), data, "lira_joint", max_epochs=n["joint_epochs"])
        if n["finetune_epochs"]:
            tools.fit(
                LIRAFinetune(model, gen, self, n["finetune_epochs"]),
                data,
                "lira_finetune",
                max_epochs=n["finetune_epochs"],
            )
        return gen

    def trigger(self, generator, x):
        return generator(x)
