"""Blind (Bagdasaryan & Shmatikov, "Blind Backdoors in Deep Learning Models", USENIX Security 2021):
a loss-level attack. The attacker's code computes the loss (Section 4): every training batch also
yields a backdoored copy (the pattern stamped, every label changed to the target), and the step's
loss combines the clean loss and the backdoor loss. No training sample is stored poisoned.

The paper balances the two losses with MGDA (Section 4.3); this is BackdoorBench's fixed-balancing
option (`weight_loss_balance_mode: fixed`, config/attack/blind/default.yaml): loss = `normal_weight`
x CE(batch) + `backdoor_weight` x CE(backdoored copy), 1.0 and 0.9. MGDA is left out. As
BackdoorBench (the backdoors101 code it vendors), the backdoor loss is switched on only once the
clean loss averaged over the last `history` batches (1,000) is below `loss_threshold` (1.0); until
then the loss is the clean loss alone (`history: 0` or `loss_threshold: null`: from the first batch).

The pattern is backdoors101's `PatternSynthesizer` pattern, 5 rows x 3 columns of white (1), black
(0) and untouched (-1) pixels, every channel alike, with its top-left pixel at row 3, column 23 of a
32 x 32 image: `top` 3 rows from the top, `right` 6 columns from the right edge (on 16 x 16 images:
column 7). The copy is stamped after the dataset's augmentation, as backdoors101 stamps the batch.
"""

from __future__ import annotations

import torch

from backdoor_bench.attacks.base import Attack, TrainBatch
from backdoor_bench.errors import ConfigError

# backdoors101's pattern: 1 white, 0 black, -1 not stamped (its mask value is -10)
PATTERN = ((1, 0, 1), (-1, 1, -1), (-1, -1, 0), (-1, 1, -1), (1, 0, 1))


class Blind(Attack):
    """Args (beyond `Attack`'s; `poison_rate` and `poison_count` do not apply: nothing is stored
    poisoned): `top`, `right` (the pattern's offset from the top and right edges), `normal_weight`,
    `backdoor_weight` (the fixed loss scales), `history`, `loss_threshold` (when the backdoor loss
    starts)."""

    def __init__(
        self,
        top: int = 3,
        right: int = 6,
        normal_weight: float = 1.0,
        backdoor_weight: float = 0.9,
        history: int = 1000,
        loss_threshold: float | None = 1.0,
        **kw,
    ):
        super().__init__(**kw)
        if int(top) < 0 or int(right) < 0:
            raise ConfigError(f"attack.top={top} and attack.right={right} must be offsets >= 0")
        if float(normal_weight) < 0 or float(backdoor_weight) < 0 or int(history) < 0:
            raise ConfigError("attack.normal_weight, attack.backdoor_weight and attack.history must be >= 0")
        self.top, self.right = int(top), int(right)
        self.normal_weight, self.backdoor_weight = float(normal_weight), float(backdoor_weight)
        self.history = int(history)
        self.loss_threshold = None if loss_threshold is None else float(loss_threshold)
        self.trains_batches = True
        # the gate's state, per training (its batch generator): the last `history` clean losses and
        # the number of batches seen, on the device
        self._owner: torch.Generator | None = None
        self._losses: torch.Tensor | None = None
        self._seen: torch.Tensor | None = None

    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        rows, cols = len(PATTERN), len(PATTERN[0])
        if self.top + rows > shape[1] or self.right + cols > shape[2]:
            raise ConfigError(
                f"attack.top={self.top}, attack.right={self.right}: the {rows}x{cols} pattern does not fit "
                f"in a {shape[1]}x{shape[2]} image: use smaller offsets"
            )

    def pattern(self, h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(values in [0, 1], mask) `[H, W]`: the pattern at its place."""
        p = torch.tensor(PATTERN, dtype=torch.float32, device=device)
        r, c = self.top, w - self.right - p.shape[1]
        values = torch.zeros(h, w, device=device)
        mask = torch.zeros(h, w, dtype=torch.bool, device=device)
        values[r : r + p.shape[0], c : c + p.shape[1]] = p.clamp(min=0)
        mask[r : r + p.shape[0], c : c + p.shape[1]] = p >= 0
        return values, mask

    def stamp_float(self, x: torch.Tensor) -> torch.Tensor:
        """The pattern on float images in [0, 1]."""
        values, mask = self.pattern(*x.shape[-2:], device=x.device)
        return torch.where(mask, values.to(x.dtype), x)

    def apply(self, x):
        values, mask = self.pattern(*x.shape[-2:], device=x.device)
        return torch.where(mask, (values * 255).to(torch.uint8), x)

    def n_poison(self, n_train, n_eligible=None):
        return 0

    def batch_counts(self, batch_size):
        return {"batch_size": batch_size, "poisoned": batch_size, "cover": 0, "backdoored_copy": True}

    def gate(self, generator: torch.Generator, device) -> torch.Tensor:
        """1.0 once the backdoor loss is on (a device scalar, no host sync), else 0.0. A new
        training (another batch generator) starts with an empty history."""
        if self.history == 0 or self.loss_threshold is None:
            return torch.ones((), device=device)
        if self._owner is not generator:
            self._owner = generator
            self._losses = torch.zeros(self.history, device=device)
            self._seen = torch.zeros((), dtype=torch.long, device=device)
        on = (self._seen >= self.history) & (self._losses.mean() < self.loss_threshold)
        return on.float()

    def record(self, loss: torch.Tensor) -> None:
        """Keep the batch's clean loss among the last `history`."""
        if self._losses is None:
            return
        self._losses.index_copy_(0, (self._seen % self.history).view(1), loss.detach().float().view(1))
        self._seen += 1

    def train_batch(self, x, y, generator):
        n, on = len(y), self.gate(generator, x.device)
        # off: the clean loss alone (scale 1, as backdoors101 for a single task)
        normal_scale = on * self.normal_weight + (1 - on)

        def combine(losses: torch.Tensor) -> torch.Tensor:
            normal = losses[:n].mean()
            self.record(normal)
            return normal_scale * normal + on * self.backdoor_weight * losses[n:].mean()

        return TrainBatch(torch.cat([x, self.stamp_float(x)]), torch.cat([y, self.target_label(y)]), combine)
