"""torchvision's ResNet-18 with the CIFAR stem (3x3 first convolution, stride 1, no max-pool),
as in DBD (Huang et al., ICLR 2022) and most CIFAR backdoor papers. `norm`: batch (default) or
group (GroupNorm with min(`norm_groups`, C) groups; see models/norm.py). `stem_pool`: keep
torchvision's 3x3 / stride-2 max-pool after the stem, as the CIFAR ResNet-18 (huyvnphan's
PyTorch_CIFAR10) that D-ST / D-BR's official code trains as its sensitivity model: the later
stages then see half the resolution."""

from functools import partial

import torchvision
from torch import nn

from backdoor_bench.models.norm import check_norm, norm2d


class ResNet18(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        norm: str = "batch",
        norm_groups: int = 32,
        stem_pool: bool = False,
    ):
        super().__init__()
        check_norm(norm, norm_groups)
        layer = None if norm == "batch" else partial(norm2d, norm, norm_groups=norm_groups)  # None: torchvision's BN
        net = torchvision.models.resnet18(num_classes=num_classes, norm_layer=layer)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        if not stem_pool:
            net.maxpool = nn.Identity()
        self.head, net.fc = net.fc, nn.Identity()
        self.net = net

    def features(self, x):
        return self.net(x)

    def forward(self, x):
        return self.head(self.features(x))
