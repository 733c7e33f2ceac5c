"""torchvision's ResNet-18 with the CIFAR stem (3x3 first convolution, stride 1, no max-pool),
as in DBD (Huang et al., ICLR 2022) and most CIFAR backdoor papers."""

import torchvision
from torch import nn


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        net = torchvision.models.resnet18(num_classes=num_classes)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        self.head, net.fc = net.fc, nn.Identity()
        self.net = net

    def features(self, x):
        return self.net(x)

    def forward(self, x):
        return self.head(self.features(x))
