"""FTrojan (Wang, Yao, Xu, An, Tong, Wang, "An Invisible Black-Box Backdoor Attack Through Frequency
Domain", ECCV 2022): an invisible trigger in the frequency domain. Each poisoned image goes to YUV
(OpenCV's YCrCb), every `window_size` x `window_size` block through a 2-D DCT, `magnitude` is added
at fixed mid/high frequencies (`positions`) of the chrominance channels (`channels`: 1 and 2), and
the image comes back through the inverse DCT; all2one, labels changed.

The construction follows the authors' `poison_frequency` (data.py) and BackdoorBench's
`ftrojann_version`. Defaults are our reading of FTrojan's CIFAR-10 setting as BackdoorBench runs it:
window 32, frequencies (15, 15) and (31, 31) of channels U and V, magnitude 30, 10% (not checked
against a config file here). Their code casts to uint8 between the colour conversions and the DCT;
ours stays in floating point and rounds once. A window larger than the image shrinks to the image
and the frequencies scale with it (on 16x16 digits: (7, 7) and (15, 15)); single-channel images
take the trigger in their only channel, as the authors' MNIST setting (no YUV).
"""

from __future__ import annotations

from backdoor_bench.attacks.base import Attack
from backdoor_bench.attacks.triggers import frequency_trigger
from backdoor_bench.errors import ConfigError


class FTrojan(Attack):
    """Args (beyond `Attack`'s): `channels` (YUV channel indices), `window_size`, `positions`
    ([row, col] inside a window), `magnitude` (added to each DCT coefficient), `yuv`."""

    def __init__(
        self,
        channels=(1, 2),
        window_size: int = 32,
        positions=((15, 15), (31, 31)),
        magnitude: float = 30,
        yuv: bool = True,
        **kw,
    ):
        super().__init__(**kw)
        self.channels = [int(c) for c in channels]
        self.positions = [[int(v) for v in p] for p in positions]
        self.window_size, self.magnitude, self.yuv = int(window_size), float(magnitude), bool(yuv)
        if self.window_size < 1 or any(
            len(p) != 2 or not all(0 <= v < self.window_size for v in p) for p in self.positions
        ):
            raise ConfigError(
                f"attack.positions={self.positions} must be [row, col] pairs inside attack.window_size={window_size}"
            )
        if not all(0 <= c < 3 for c in self.channels):
            raise ConfigError(f"attack.channels={self.channels} must be channel indices 0..2")

    def window(self, h: int, w: int) -> tuple[int, list[list[int]]]:
        """The window on an `h` x `w` image and the positions scaled to it."""
        win = min(self.window_size, h, w)
        return win, [[r * win // self.window_size, c * win // self.window_size] for r, c in self.positions]

    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        win, _ = self.window(*shape[1:])
        if shape[1] % win or shape[2] % win:
            raise ConfigError(
                f"attack.window_size={self.window_size} does not tile a {shape[1]}x{shape[2]} image: use a divisor"
            )

    def apply(self, x):
        win, positions = self.window(*x.shape[-2:])
        return frequency_trigger(x, self.channels, win, positions, self.magnitude, self.yuv)
