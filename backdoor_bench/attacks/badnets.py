"""BadNets (Gu et al., 2017): a small patch stamped at a fixed place; all2one or all2all.

Default as BackdoorBench (github.com/SCLBD/BackdoorBench, config/attack/badnet/default.yaml and
resource/badnet/trigger_image.png): a 3x3 white square in the
bottom-right corner, 10% of the training set, target 0.

`pattern_path` takes a trigger image of the image's size, black but for the trigger (DBD's
`data/trigger/cifar_1.png`, the asset `dbd_badnets_patch`): its non-zero pixels replace the image's,
channel by channel, as DBD's `BadNets.add_trigger` does; the patch options are then unused.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from backdoor_bench.attacks.base import Attack
from backdoor_bench.attacks.triggers import Patch, check_pattern_file, load_pattern, with_file_hash


class BadNets(Attack):
    """Args (beyond `Attack`'s): the patch (`triggers.Patch`): `size`, `location` (a corner name
    or `[row, col]` of the top-left pixel), `margin` from the border, `pattern` (solid,
    checkerboard, random), `value`, `pattern_seed`; or `pattern_path`, a full-size trigger image."""

    def __init__(
        self,
        size: int = 3,
        location="bottom_right",
        margin: int = 0,
        pattern: str = "solid",
        value: int = 255,
        pattern_seed: int = 0,
        pattern_path: str | None = None,
        **kw,
    ):
        super().__init__(**kw)
        if pattern_path:
            check_pattern_file(pattern_path, "attack.pattern_path")
        self.pattern_path = pattern_path
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

    def poison_spec(self, cfg):
        spec = super().poison_spec(cfg)
        if spec.get("pattern_path", "") is None:  # the key at its default keeps the older cache key
            del spec["pattern_path"]
        return with_file_hash(spec, "pattern", self.pattern_path)

    def apply(self, x):
        if self.pattern_path:
            p = load_pattern(self.pattern_path, tuple(x.shape[1:]), nearest=True).to(x.device)
            return torch.where(p > 0, p, x)
        return self.trigger.stamp(x)
