"""PreActResNet-18 (He et al., "Identity Mappings in Deep Residual Networks", 2016), CIFAR stem,
as used by BackdoorBench. `width` is the first stage's channel count (64 in the paper; 16 gives
the quarter-width model for CPU runs). `norm`: batch (default) or group (GroupNorm with
min(`norm_groups`, C) groups; see models/norm.py)."""

import torch.nn.functional as F
from torch import nn

from backdoor_bench.models.norm import norm2d


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, norm: str = "batch", norm_groups: int = 32):
        super().__init__()
        self.bn1 = norm2d(norm, cin, norm_groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = norm2d(norm, cout, norm_groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, width: int = 64, norm: str = "batch", norm_groups: int = 32
    ):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        layers, cin = [], w
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = w * 2**i
            layers += [PreActBlock(cin, cout, stride, norm, norm_groups), PreActBlock(cout, cout, 1, norm, norm_groups)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = norm2d(norm, cin, norm_groups)
        self.head = nn.Linear(cin, num_classes)

    def features(self, x):
        out = self.layers(self.conv1(x))
        out = F.relu(self.bn(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))
