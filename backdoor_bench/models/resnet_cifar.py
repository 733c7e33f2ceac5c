"""ResNet-32 for CIFAR (He et al., "Deep Residual Learning for Image Recognition", 2016, section
4.2): a 3x3 convolution, then 3 stages of 5 basic blocks at `width`, 2 `width` and 4 `width`
channels (16/32/64 in the paper; stride 2 at the start of stages 2 and 3), global average pooling
and a linear head: 6n + 2 = 32 layers with n = 5. The ISPL paper ("Defending Against Backdoor
Attacks Using Ensembles of Weak Learners", Table 4, App. B.1) runs it beside PreActResNet-18.

Shortcuts where the shape changes are 1x1 convolutions with batch norm (the paper's option B),
not option A's zero-padded identity: 2,752 more parameters (0.467M instead of 0.464M for 10
classes). `norm`: batch (default) or group (GroupNorm with min(`norm_groups`, C) groups; see
models/norm.py)."""

import torch.nn.functional as F
from torch import nn

from backdoor_bench.models.norm import norm2d


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, norm: str = "batch", norm_groups: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm2d(norm, cout, norm_groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm2d(norm, cout, norm_groups)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm2d(norm, cout, norm_groups))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet32(nn.Module):
    """Submodules: `conv1`, `bn1`, `layer1`..`layer3` (5 blocks each, `layer3.2` is the third
    block of the third stage), `head`."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        blocks: int = 5,
        norm: str = "batch",
        norm_groups: int = 32,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = norm2d(norm, width, norm_groups)
        cin = width
        for i, stride in enumerate((1, 2, 2)):
            cout = width * 2**i
            stage = [BasicBlock(cin, cout, stride, norm, norm_groups)] + [
                BasicBlock(cout, cout, 1, norm, norm_groups) for _ in range(blocks - 1)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            cin = cout
        self.head = nn.Linear(cin, num_classes)

    def features(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))
