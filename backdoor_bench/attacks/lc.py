"""Label-Consistent (Turner et al., 2019): clean-label; target-class training images are first
made hard with an adversarial perturbation from a clean model, then get the corner trigger.
Labels never change. At test time only the trigger is added.

The perturbation: untargeted L-inf PGD on the attacker's clean model (the run's model trained
on the clean training set; cached and shared through `AttackTools.clean_model`), maximising the
cross-entropy of the true label from a random start in the eps-ball. Defaults from the flows
paper's Appendix B (Sabolic, Grubisic, Segvic; after Turner et al.): eps 16/255, step 1.5/255,
30 steps, a 3x3 grid (checkerboard) trigger in each corner, 25% of the target class (DBD, Huang et
al., ICLR 2022, and the flows paper; 2.5% of CIFAR-10). D-ST/D-BR's official code (Chen, Wu, Wang,
NeurIPS 2022; utils/dataloader_bd.py) uses eps 8/255, step 2/255, 4 steps.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from backdoor_bench.attacks.base import Attack
from backdoor_bench.attacks.triggers import CORNERS, Patch, stamp_all
from backdoor_bench.errors import ConfigError

log = logging.getLogger(__name__)


class LabelConsistent(Attack):
    """Args (beyond `Attack`'s): `eps`, `step_size` (in pixel levels, /255), `steps`, `batch_size`,
    the corner trigger (`size`, `pattern`, `value`, `corners`), `surrogate_epochs`."""

    clean_label = True
    rate_of = "eligible"
    needs_tools = True

    def __init__(
        self,
        eps: float = 16,
        step_size: float = 1.5,
        steps: int = 30,
        batch_size: int = 256,
        size: int = 3,
        pattern: str = "checkerboard",
        value: int = 255,
        corners=CORNERS,
        surrogate_epochs: int | None = None,
        **kw,
    ):
        super().__init__(**kw)
        if float(eps) < 0 or float(step_size) < 0 or int(steps) < 0 or int(batch_size) < 1:
            raise ConfigError("attack.eps, attack.step_size and attack.steps must be >= 0, attack.batch_size >= 1")
        self.eps, self.step_size, self.steps, self.batch_size = (
            float(eps),
            float(step_size),
            int(steps),
            int(batch_size),
        )
        self.patches = [
            Patch(size=int(size), location=c, pattern=pattern, value=int(value), key="attack") for c in corners
        ]

    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        for p in self.patches:
            p.check(*shape[1:])

    def apply(self, x):
        return stamp_all(self.patches, x)

    def stamp(self, x, index, generator):
        return self.apply(self.perturb(x, torch.full((len(x),), self.target), generator))

    def perturb(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """PGD (L-inf, eps/255) away from the true labels `y`; uint8 in, uint8 out."""
        if self.steps == 0 or self.eps == 0:
            return x
        tools = self.require_tools()
        model = tools.clean_model().eval().to(tools.device)
        for p in model.parameters():
            p.requires_grad_(False)
        eps, step = self.eps / 255, self.step_size / 255
        out = []
        for i in range(0, len(x), self.batch_size):
            x0 = x[i : i + self.batch_size].to(tools.device).float() / 255
            yb = y[i : i + self.batch_size].to(tools.device)
            start = (torch.rand(x0.shape, generator=generator) * 2 - 1).to(tools.device) * eps
            adv = (x0 + start).clamp(0, 1)
            for _ in range(self.steps):
                adv.requires_grad_(True)
                loss = F.cross_entropy(model(adv), yb)
                (grad,) = torch.autograd.grad(loss, adv)
                adv = torch.min(torch.max(adv.detach() + step * grad.sign(), x0 - eps), x0 + eps).clamp(0, 1)
            out.append((adv * 255).round().to(torch.uint8).cpu())
        log.info(
            "label-consistent: PGD on %d target-class images (eps %.1f/255, %d steps)", len(x), self.eps, self.steps
        )
        return torch.cat(out)
