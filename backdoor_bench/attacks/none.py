"""No attack: the clean baseline. Poisons nothing; its trigger is the identity."""

import torch

from backdoor_bench.attacks.base import Attack


class NoAttack(Attack):
    def __init__(self, name: str = "none", target: int = 0, num_classes: int | None = None, **_):
        super().__init__(name=name, target=target, poison_rate=0.0, poison_count=0, num_classes=num_classes)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x
