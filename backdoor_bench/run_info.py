"""What a run knows about how it was launched: the config options chosen (presets by their full
name, `attack=dst/badnets` as `dst/badnets`), its command-line overrides (a sweep point's swept
values among them) and its sweep folder. `run.py` builds it from Hydra; the pipeline writes it
into results.json and names the run and its folder with it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

# overrides that change where or how a run is recorded, not what it computes: never in a name
UNNAMED = ("hydra", "paths", "logger", "sweep", "cache")
GROUPS = ("dataset", "model", "attack", "defense", "trainer", "ssl", "experiment")
MAX_NAME = 160  # characters of a point's name (a folder name may hold 255 bytes)


def override_key(override: str) -> str:
    """`attack.poison_rate` of `attack.poison_rate=0.1` (and of `+x=1`, `~x`)."""
    return override.lstrip("+~").split("=", 1)[0]


def named_overrides(overrides) -> list[str]:
    """The overrides that say what a run computes: those of `UNNAMED` (paths, logger, ...) left out."""
    return [str(o) for o in overrides if override_key(str(o)).split(".")[0].split("/")[0] not in UNNAMED]


def point_name(overrides) -> str:
    """A sweep point's folder name from its overrides: `attack=dst/badnets`, `defense=ft` ->
    `attack=dst-badnets,defense=ft`. Filesystem-safe (letters, digits and `._,=+~-` only), at most
    `MAX_NAME` characters (a longer one keeps its start and a hash of the whole), and `default`
    when no override names anything. A Hydra resolver (`${point_name:...}`, registered by
    `register_resolver`) so that `hydra.sweep.subdir` can use it."""
    name = ",".join(named_overrides(overrides))
    safe = re.sub(r"[^A-Za-z0-9._,=+~-]", "-", name)
    if len(safe) > MAX_NAME:
        safe = f"{safe[: MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe or "default"


def register_resolver() -> None:
    """Make `${point_name:${hydra.overrides.task}}` available to Hydra configs (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("point_name"):
        OmegaConf.register_new_resolver("point_name", point_name)


@dataclass(frozen=True)
class RunInfo:
    """`choices`: config group -> the option chosen (`attack`: `dst/badnets`); `overrides`: the
    run's command-line overrides in their order; `sweep_dir`: the multirun folder (None for a
    single run)."""

    choices: dict = field(default_factory=dict)
    overrides: tuple = ()
    sweep_dir: str | None = None

    @classmethod
    def from_hydra(cls, hc, multirun: bool) -> RunInfo:
        """From the running job's `HydraConfig`."""
        choices = {k: str(v) for k, v in hc.runtime.choices.items() if k in GROUPS and v is not None}
        return cls(choices, tuple(str(o) for o in hc.overrides.task), str(hc.sweep.dir) if multirun else None)

    def choice(self, group: str, cfg) -> str:
        """The option of `group` by its full name; the config's `name` when Hydra did not say."""
        return self.choices.get(group) or str(cfg[group].get("name"))

    def run_name(self, cfg) -> str:
        """`digits-dst/badnets-ft-s0`, then every override that part does not show
        (`attack.poison_rate=0.05,trainer=tiny`): two points of a sweep never share a name."""
        shown = ("dataset", "attack", "defense")
        base = "-".join([*(self.choice(g, cfg) for g in shown), f"s{cfg.seed}"])
        rest = [o for o in named_overrides(self.overrides) if override_key(o) not in (*shown, "seed")]
        return " ".join([base, ",".join(rest)]) if rest else base

    @property
    def group(self) -> str | None:
        """The W&B group: the experiment (`dbd/table1`), else the sweep folder, else none."""
        if self.choices.get("experiment"):
            return self.choices["experiment"]
        if self.sweep_dir:
            return str(Path(self.sweep_dir))[-128:]  # W&B's limit on a group's length
        return None
