"""A small CNN for small images (the default for digits): seconds per epoch on a CPU. `norm`:
batch (default) or group (GroupNorm with min(`norm_groups`, C) groups; see models/norm.py)."""

from torch import nn

from backdoor_bench.models.norm import norm2d


class SmallCNN(nn.Module):
    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, width: int = 32, norm: str = "batch", norm_groups: int = 32
    ):
        super().__init__()
        w = width

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm2d(norm, cout, norm_groups), nn.ReLU(inplace=True)
            )

        self.body = nn.Sequential(
            block(in_channels, w),
            block(w, w),
            nn.MaxPool2d(2),
            block(w, 2 * w),
            block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))
