"""Models. Every model exposes `features(x)` (the penultimate vector) and `head(features)`, and
takes images as floats in [0, 1]: normalisation is the model's first layer, so attacks and
defenses all work in pixel space."""

from __future__ import annotations

import torch
from torch import nn


class ImageClassifier(nn.Module):
    """Normalisation + a backbone with `features` and `head`."""

    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def head(self) -> nn.Module:
        return self.backbone.head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(cfg, num_classes: int, in_channels: int, mean, std) -> ImageClassifier:
    """Instantiate `cfg.model` for a dataset's classes, channels and normalisation."""
    from backdoor_bench.errors import instantiate_checked

    backbone = instantiate_checked("model", cfg, num_classes=num_classes, in_channels=in_channels)
    return ImageClassifier(backbone, mean, std)
