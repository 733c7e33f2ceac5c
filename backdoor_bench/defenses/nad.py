"""NAD: Neural Attention Distillation (Li, Lyu, Koren, Lyu, Li and Ma, "Neural Attention
Distillation: Erasing Backdoor Triggers from Deep Neural Networks", ICLR 2021, Sec. 3).

1. Teacher: the backdoored model (copied) fine-tuned with cross-entropy on the trusted clean
   subset for `teacher_epochs` (the authors' README: "5~10 epochs" on 5% clean data, obtained
   from their distillation code with every beta = 0; 10 as BackdoorBench's `te_epochs`).
2. Student: the backdoored model trained on the clean subset for `epochs` with
   CE + sum_l beta_l x L_AT(F_S^l, F_T^l) over the configured layers, the teacher frozen and in
   eval mode, where (Sec. 3, Eq. 1-3) the attention map of a feature map F [N, C, H, W] is
   A(F) = mean_c |F_c|^p (p = 2), flattened to [N, H*W] and L2-normalised per sample, and
   L_AT = the mean squared difference of the normalised maps. The paper writes the L2 distance of
   the normalised maps; the authors' code (`at.py`) takes `F.mse_loss` (the mean over samples
   and positions) and sums |F|^p over channels; after the normalisation a sum and a mean are the
   same map. The betas below were set for this MSE, so it is what we compute.

Layers: `layers` names submodules as `model.named_modules()` spells them; `null` takes the
default of the model (the ends of its last three stages, as NAD's WRN-16-1 uses its three
groups): small_cnn `backbone.body.1/4/6`, preact_resnet18 `backbone.layers.3/5/7`, resnet18
`backbone.net.layer2/3/4`, resnet32 `backbone.layer1/2/3`; an integer picks from that default
(`[-1]`: the last stage, on any model). An unknown name fails with the list of valid ones. DBD
(Huang et al., ICLR 2022, App. B.3) distils only the last residual group of ResNet-18 and picks
its beta by a grid search against the test ASR (App. D.2), which a defense may not do;
`defense=nad/dbd` takes its single layer (`[-1]`) and its teacher learning rate (0.01).

Betas and recipe: the authors' code (`config.py`, `utils/util.py`): betas 500 / 1000 / 1000 for
the low / middle / high layer (BackdoorBench's `config/defense/nad/cifar10.yaml` has the same),
p = 2, 20 epochs, batch 64, SGD momentum 0.9, Nesterov, weight decay 1e-4, lr 0.1 for two
epochs then 0.01; the teacher is fine-tuned with the same recipe (their README). The last epoch's
student is the result: the authors' code saves checkpoints by test accuracy, which a defense may
not do.
"""

from __future__ import annotations

import copy
import logging

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from backdoor_bench.defenses.base import Defense, DefenseContext, Outcome
from backdoor_bench.errors import ConfigError
from backdoor_bench.training.features import captured, resolve_layer
from backdoor_bench.training.losses import cross_entropy
from backdoor_bench.training.optim import configure_optimizers
from backdoor_bench.training.recipe import recipe

log = logging.getLogger(__name__)

# the ends of the last three stages of each model (backbone class name -> layer names)
DEFAULT_LAYERS = {
    "SmallCNN": ["backbone.body.1", "backbone.body.4", "backbone.body.6"],
    "PreActResNet18": ["backbone.layers.3", "backbone.layers.5", "backbone.layers.7"],
    "ResNet18": ["backbone.net.layer2", "backbone.net.layer3", "backbone.net.layer4"],
    "ResNet32": ["backbone.layer1", "backbone.layer2", "backbone.layer3"],
}

NAD_OPTIMIZER = {
    "name": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "nesterov": True,
    "schedule": "step",
    "milestones": [2],
    "gamma": 0.1,
}


def attention_map(fm: torch.Tensor, p: float = 2.0, eps: float = 1e-6) -> torch.Tensor:
    """[N, H*W]: mean over channels of |fm|^p (fm [N, C, H, W]), flattened, divided by its L2 norm
    (+ eps, as the authors' code)."""
    a = fm.float().abs().pow(p).mean(1).flatten(1)
    return a / (a.norm(dim=1, keepdim=True) + eps)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """NAD's L_AT: the mean squared difference of the normalised attention maps (teacher detached)."""
    return F.mse_loss(attention_map(student, p), attention_map(teacher.detach(), p))


def default_layers(model: torch.nn.Module) -> list[str]:
    """The model's default NAD layers; a ConfigError for a model without one."""
    kind = type(getattr(model, "backbone", model)).__name__
    if kind not in DEFAULT_LAYERS:
        raise ConfigError(
            f"defense.layers=null: NAD has no default layers for {kind}; name them (e.g. [backbone.layer3])"
        )
    return list(DEFAULT_LAYERS[kind])


class AttentionDistillation(pl.LightningModule):
    """Minimise CE(student(x), y) + sum_l beta_l x L_AT(student's layer l, teacher's layer l).
    `s_out` / `t_out`: the dicts the `captured` hooks fill with each forward pass's layer outputs."""

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module,
        s_out: dict,
        t_out: dict,
        layers: list[str],
        betas: list[float],
        p: float,
        optim: dict,
        max_epochs: int,
        channels_last: bool = False,
    ):
        super().__init__()
        self.student, self.teacher = student, teacher.requires_grad_(False)
        self.s_out, self.t_out, self.layers, self.betas, self.p = s_out, t_out, layers, betas, p
        self.optim, self.max_epochs, self.channels_last = optim, max_epochs, channels_last
        if channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
            self.teacher = self.teacher.to(memory_format=torch.channels_last)

    def training_step(self, batch, batch_idx):
        x, y = batch["x"], batch["y"]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.teacher.eval()
        with torch.no_grad():
            self.teacher(x)
        logits = self.student(x)
        ce = cross_entropy(logits, y)
        at = [attention_loss(self.s_out[name], self.t_out[name], self.p) for name in self.layers]
        loss = ce + sum(b * a for b, a in zip(self.betas, at))
        n = len(y)
        self.log_dict({"nad/ce": ce, "nad/at": sum(at)}, on_step=False, on_epoch=True, batch_size=n)
        return loss

    def configure_optimizers(self):
        return configure_optimizers(self.student.parameters(), self.optim, self.max_epochs)


def pick_layers(model: torch.nn.Module, layers: list[str | int] | None) -> list[str]:
    """`layers` as module names: null is the model's default, an integer indexes that default."""
    if layers is None:
        return default_layers(model)
    if not any(isinstance(layer, int) for layer in layers):
        return list(layers)
    default = default_layers(model)
    for layer in layers:
        if isinstance(layer, int) and not -len(default) <= layer < len(default):
            raise ConfigError(f"defense.layers: index {layer} is outside the model's default layers {default}")
    return [default[layer] if isinstance(layer, int) else layer for layer in layers]


class NAD(Defense):
    """Args: `clean_fraction` (the trusted clean subset), `layers` (null: the model's default; names,
    or integers indexing the default) and
    `betas` (one per layer), `p` (the attention power), `teacher_epochs`, `epochs`, `batch_size`,
    `optimizer` (the distillation), `teacher_optimizer` (null: the same)."""

    needs_clean = True

    def __init__(
        self,
        name: str = "nad",
        layers: list[str | int] | None = None,
        betas: list[float] = (500.0, 1000.0, 1000.0),
        p: float = 2.0,
        teacher_epochs: int = 10,
        epochs: int = 20,
        batch_size: int = 64,
        optimizer: dict | None = None,
        teacher_optimizer: dict | None = None,
        **kw,
    ):
        super().__init__(name=name, **kw)
        self.layers = None if layers is None else [x if isinstance(x, int) else str(x) for x in layers]
        self.betas = [float(b) for b in betas]
        if self.layers is not None and (not self.layers or len(self.layers) != len(self.betas)):
            raise ConfigError(
                f"defense.layers={self.layers} and defense.betas={self.betas} must be non-empty lists "
                "of the same length: one beta per layer"
            )
        if not self.betas or any(b < 0 for b in self.betas):
            raise ConfigError(f"defense.betas={self.betas} must be a non-empty list of weights >= 0")
        if not float(p) > 0:
            raise ConfigError(f"defense.p={p} must be an attention power > 0")
        self.p = float(p)
        self.recipe = recipe(epochs, batch_size, optimizer or NAD_OPTIMIZER)
        self.teacher_recipe = recipe(
            teacher_epochs, batch_size, teacher_optimizer or self.recipe.optimizer, prefix="teacher_"
        )

    def run(self, ctx: DefenseContext) -> Outcome:
        student = copy.deepcopy(ctx.backdoored_model())
        layers = pick_layers(student, self.layers)
        if len(layers) != len(self.betas):
            raise ConfigError(f"defense.betas={self.betas} must give one beta per layer of {layers} (defense.layers)")
        for name in layers:
            resolve_layer(student, name, "layers")  # a bad name fails before any training
        t = self.teacher_recipe
        log.info("nad: fine-tuning the teacher on %d trusted clean samples", len(ctx.clean))
        teacher = ctx.finetune(
            copy.deepcopy(student), "nad_teacher", t.epochs, optimizer=t.optimizer, batch_size=t.batch_size
        )
        r = self.recipe
        epochs = ctx.stage_length(r.epochs)
        log.info("nad: distilling attention at %s with betas %s", ", ".join(layers), self.betas)
        with captured(student, layers) as s_out, captured(teacher, layers) as t_out:
            module = AttentionDistillation(
                student, teacher, s_out, t_out, layers, self.betas, self.p, r.optimizer, epochs, ctx.channels_last
            )
            ctx.fit("nad", module, ctx.clean, epochs, batch_size=r.batch_size)
        extra = {"layers": layers, "betas": self.betas, "p": self.p, "n_clean": len(ctx.clean)}
        return Outcome(model=student.cpu(), extra=extra)
