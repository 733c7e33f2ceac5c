"""The dirty-label one-to-one scenarios of the ISPL paper ("Defending Against Backdoor Attacks
Using Ensembles of Weak Learners", anonymous ICLR 2022 submission, Sec. 6 and App. B.2; the
authors' code, data/cifar10_backdoor.py and data/poison.py): a few pixels of one
colour stamped on `source`-class images, relabeled to `target`.

The trigger comes from the scenario seed: a shape uniform in {pixel, pattern (an X of 5 pixels:
centre and 4 diagonal neighbours), ell (3 pixels: centre, below, right)}, a colour of 3 integers
in [0, 254], and a position (on 32 x 32: pixel in [0, 30]^2, pattern in [1, 29]^2, ell in
[0, 29]^2; other sizes scale the bounds as H - 2, H - 3). This is OUR generator (torch), not the
authors' (numpy), so it draws other triggers than theirs from the same seed. `triggers` pins a
trigger per scenario seed, {scenario_seed: {shape, color, position}} (the ISPL pair presets
hold the authors' three, replayed from their generator); a seed it lacks is drawn. `shape`,
`color` and `position` fix any of them over both. `poison_rate` is a fraction of the source
class (the paper: 5, 10 or 20%); the poisoned
samples are chosen with the authors' per-scenario seed, scenario_seed + 100 rate + 10 source + target.
ASR and `tmr` (targeted misclassification rate: triggered source images predicted as the target
while the clean image is predicted as the source) are measured on source-class test images.
"""

from __future__ import annotations

import torch

from backdoor_bench.attacks.base import Attack
from backdoor_bench.errors import ConfigError
from backdoor_bench.metrics import targeted_misclassification_rate

SHAPES = ("pixel", "pattern", "ell")
OFFSETS = {"pixel": [(0, 0)], "pattern": [(0, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)], "ell": [(0, 0), (1, 0), (0, 1)]}


class DirtyLabel(Attack):
    """Args (beyond `Attack`'s): `source`, `target`, `scenario_seed` (draws the trigger), optional
    `triggers` ({scenario_seed: {shape, color, position}}: pinned triggers, e.g. the authors'),
    and optional fixed `shape`, `color` ([r, g, b]) and `position` ([row, col])."""

    rate_of = "eligible"

    def __init__(
        self,
        source: int = 0,
        target: int = 2,
        scenario_seed: int = 100,
        shape: str | None = None,
        color=None,
        position=None,
        triggers=None,
        **kw,
    ):
        super().__init__(target=target, **kw)
        if self.label_mode != "all2one":
            raise ConfigError("attack=dirty_label is one-to-one: use attack.label_mode=all2one")
        self._triggers = {}
        for seed, t in (triggers or {}).items():
            t = dict(t)
            if set(t) != {"shape", "color", "position"}:
                raise ConfigError(f"attack.triggers[{seed}] must give shape, color and position, not {sorted(t)}")
            self._check_setting(t["shape"], t["color"], f"attack.triggers[{seed}].")
            self._triggers[int(seed)] = t
        self._check_setting(shape, color, "attack.")
        if int(source) == self.target:
            raise ConfigError(f"attack.source={source} equals attack.target: pick two different classes")
        self.source, self.scenario_seed = int(source), int(scenario_seed)
        self._shape, self._color, self._position = shape, color, position

    @staticmethod
    def _check_setting(shape, color, key: str) -> None:
        if shape is not None and shape not in SHAPES:
            raise ConfigError(f"{key}shape={shape!r} is unknown: use one of {', '.join(SHAPES)} or null")
        if color is not None and (len(color) != 3 or not all(0 <= int(v) <= 255 for v in color)):
            raise ConfigError(f"{key}color={list(color)} must be 3 values in 0..255 (r, g, b) or null")

    @property
    def pinned(self) -> dict | None:
        """This scenario's trigger from `triggers`, or None when it is drawn."""
        return self._triggers.get(self.scenario_seed)

    def check(self, num_classes, shape):
        super().check(num_classes, shape)
        if not 0 <= self.source < num_classes:
            raise ConfigError(f"attack.source={self.source} is not a class: use 0..{num_classes - 1}")
        if min(shape[1:]) < 4:
            raise ConfigError("attack=dirty_label needs images of at least 4x4 pixels")
        position = self._position if self._position is not None else (self.pinned or {}).get("position")
        if position is not None:
            r, c = (int(v) for v in position)
            lo, hi = self._bounds(self.trigger(shape[1])[0], shape[1])
            if not (lo <= r <= hi and lo <= c <= hi):
                key = (
                    "attack.position"
                    if self._position is not None
                    else f"attack.triggers[{self.scenario_seed}].position"
                )
                raise ConfigError(
                    f"{key}={[r, c]} puts the trigger outside the image: use rows and columns in "
                    f"[{lo}, {hi}] (attack.position=[r,c], or attack.triggers=null to draw it)"
                )

    @staticmethod
    def _bounds(shape: str, size: int) -> tuple[int, int]:
        return {"pixel": (0, size - 2), "pattern": (1, size - 3), "ell": (0, size - 3)}[shape]

    def trigger(self, size: int) -> tuple[str, list[int], tuple[int, int]]:
        """(shape, colour, (row, col)) of this scenario on `size` x `size` images."""
        g = torch.Generator().manual_seed(self.scenario_seed * 1000 + 10 * self.source + self.target)
        shape = SHAPES[int(torch.randint(3, (1,), generator=g))]
        color = torch.randint(0, 255, (3,), generator=g).tolist()
        pinned = self.pinned or {}
        shape = self._shape or pinned.get("shape") or shape
        color = self._color if self._color is not None else pinned.get("color", color)
        lo, hi = self._bounds(shape, size)
        pos = torch.randint(lo, hi + 1, (2,), generator=g).tolist()
        pos = self._position if self._position is not None else pinned.get("position", pos)
        return shape, [int(v) for v in color], (int(pos[0]), int(pos[1]))

    def apply(self, x):
        shape, color, (r, c) = self.trigger(x.shape[-1])
        out = x.clone()
        value = torch.tensor(color[: x.shape[1]] if x.shape[1] == 3 else color[:1], dtype=torch.uint8, device=x.device)
        for dr, dc in OFFSETS[shape]:
            out[:, :, r + dr, c + dc] = value
        return out

    def eligible(self, y):
        return y == self.source

    def asr_mask(self, y):
        return y == self.source

    def poison(self, train, seed):
        """The ISPL authors' per-scenario seed, scenario_seed + 100 rate + 10 source + target (plus the run's
        `seed`, 0 by default, so that seed sweeps vary the poisoned samples too)."""
        rate = int(round(100 * float(self.poison_rate)))
        return super().poison(train, self.scenario_seed + rate + 10 * self.source + self.target + seed)

    def extra_metrics(self, pred_clean, pred_triggered, y):
        return {"tmr": targeted_misclassification_rate(pred_clean, pred_triggered, y, self.source, self.target)}
