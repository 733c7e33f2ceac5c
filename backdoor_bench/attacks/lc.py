"""Label-Consistent (Turner et al., 2019): clean-label; target-class training images are first
made hard with an adversarial perturbation from a clean model, then get the corner trigger.
Labels never change. At test time only the trigger is added.

The perturbation: untargeted L-inf PGD on the attacker's clean model (the run's model trained
on the clean training set; cached and shared through `AttackTools.clean_model`), maximising the
cross-entropy of the true label from a random start in the eps-ball. Defaults from the flows
paper's Appendix B (Sabolic, Grubisic, Segvic; after Turner et al.): eps 16/255, step 1.5/255,
30 steps, 25% of the target class (DBD, Huang et al., ICLR 2022, and the flows paper; 2.5% of
CIFAR-10). D-ST/D-BR's official code (Chen, Wu, Wang, NeurIPS 2022; utils/dataloader_bd.py) uses
eps 8/255, step 2/255, 4 steps.

The corner trigger (`pattern`), with G = [0 0 v] [0 v 0] [v 0 v] (rows; v = `value`, 0 elsewhere):
- `all_corners` (default): MadryLab's "all-corners" trigger as BackdoorBench stamps it
  (utils/bd_img_transform/lc.py): G in the right-hand corners and G mirrored left-right in the
  left-hand ones (top-left [v 0 0] [0 v 0] [v 0 v]), touching the borders; top and bottom alike.
- `dst_corners`: D-ST/D-BR's `_fourCornerTrigger`: G at the bottom-right, mirrored towards each
  other corner (left-right, up-down or both), the top and left patches one pixel in from the border.
Both keep 3x3 pixels per corner on any image size (BackdoorBench resizes its 32x32 mask with
nearest neighbour instead, which thins it out on small images). Any other `pattern` (solid,
checkerboard, random, grid) is a `size` x `size` patch at each entry of `corners` (DBD's preset).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from backdoor_bench.attacks.base import Attack
from backdoor_bench.attacks.triggers import CORNERS, Patch
from backdoor_bench.errors import ConfigError

log = logging.getLogger(__name__)

CORNER_TRIGGERS = ("all_corners", "dst_corners")


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
        pattern: str = "all_corners",
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
        self.corner_style = pattern if pattern in CORNER_TRIGGERS else None
        if self.corner_style and int(size) != 3:
            raise ConfigError(f"attack.pattern={pattern} is a 3x3 pattern per corner: set attack.size=3")
        if self.corner_style and not all(isinstance(c, str) and c in CORNERS for c in corners):
            raise ConfigError(
                f"attack.pattern={pattern} takes corner names in attack.corners: use {', '.join(CORNERS)}"
            )
        self.corners, self.value = list(corners), int(value)
        self.patches = [
            Patch(size=int(size), location=c, pattern="solid" if self.corner_style else pattern, value=int(value))
            for c in self.corners
        ]

    def corner_patches(self, channels: int, h: int, w: int) -> list[tuple[Patch, torch.Tensor | None]]:
        """(patch, its pixels or None for the patch's own pattern), one per entry of `corners`."""
        if not self.corner_style:
            return [(p, None) for p in self.patches]
        grid = Patch(size=3, pattern="grid", value=self.value).pixels(channels)  # G, the bottom-right form
        out = []
        for corner in self.corners:
            top, left = corner.startswith("top"), corner.endswith("left")
            if self.corner_style == "all_corners":
                patch, flips = Patch(size=3, location=corner), [-1] if left else []
            else:  # D-ST: mirrored towards the corner, one pixel in from the top and left borders
                patch = Patch(size=3, location=[1 if top else h - 3, 1 if left else w - 3])
                flips = [d for d, on in ((-2, top), (-1, left)) if on]
            out.append((patch, grid.flip(flips) if flips else grid))
        return out

    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        for p, _ in self.corner_patches(*shape):
            p.check(*shape[1:])

    def apply(self, x):
        for p, pixels in self.corner_patches(*x.shape[-3:]):
            x = p.stamp(x, pixels)
        return x

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
