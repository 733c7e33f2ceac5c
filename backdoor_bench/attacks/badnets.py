"""BadNets (Gu et al., 2017): a small patch stamped at a fixed place; all2one or all2all.

Default as BackdoorBench (github.com/SCLBD/BackdoorBench, config/attack/badnet/default.yaml and
resource/badnet/trigger_image.png): a 3x3 white square in the
bottom-right corner, 10% of the training set, target 0.
"""

from __future__ import annotations

from collections.abc import Iterable

from backdoor_bench.attacks.base import Attack
from backdoor_bench.attacks.triggers import Patch


class BadNets(Attack):
    """Args (beyond `Attack`'s): the patch (`triggers.Patch`): `size`, `location` (a corner name
    or `[row, col]` of the top-left pixel), `margin` from the border, `pattern` (solid,
    checkerboard, random), `value`, `pattern_seed`."""

    def __init__(
        self,
        size: int = 3,
        location="bottom_right",
        margin: int = 0,
        pattern: str = "solid",
        value: int = 255,
        pattern_seed: int = 0,
        **kw,
    ):
        super().__init__(**kw)
        if not isinstance(location, str):  # a ListConfig: Patch checks it is [row, col]
            location = list(location) if isinstance(location, Iterable) else location
        self.trigger = Patch(
            size=int(size),
            location=location,
            margin=int(margin),
            pattern=pattern,
            value=int(value),
            seed=int(pattern_seed),
        )

    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        self.trigger.check(*shape[1:])

    def apply(self, x):
        return self.trigger.stamp(x)
