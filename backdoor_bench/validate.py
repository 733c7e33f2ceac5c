"""Config validation before any data is loaded or any model trained.

Every failure is a `ConfigError` whose message names the key to change; `run.py` prints it
without a traceback.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from backdoor_bench.assets import resolve_attack_config
from backdoor_bench.attacks.base import Attack
from backdoor_bench.defenses.base import Defense
from backdoor_bench.errors import KINDS, ConfigError, check_value, instantiate_checked
from backdoor_bench.models import build_model
from backdoor_bench.training.features import LAST_MAP, resolve_layer
from backdoor_bench.training.fit import COMPILE, COMPILE_MODES
from backdoor_bench.training.optim import configure_optimizers

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "64-true")
CONF = Path(__file__).resolve().parent.parent / "conf"
# Keys no constructor declares take their type from the default config (conf/config.yaml,
# conf/trainer/default.yaml); these few default to null there (or live outside `trainer`), so
# their type is stated here.
DECLARED = {
    "trainer.train_subset": (int, True),
    "trainer.test_subset": (int, True),
    "trainer.max_stage_epochs": (int, True),
    "trainer.max_stage_steps": (int, True),
    "trainer.progress_bar": (bool, True),
    "sweep.skip_done": (bool, False),
    "trainer.lr_batch_size": (int, True),
    "dataset.num_classes": (int, False),
    "dataset.channels": (int, False),
    "dataset.image_size": (int, False),
}
OWN_CHECK = {"trainer.devices"}  # an int by default, but "auto" and [0] are fine too: checked below


def default_kinds() -> dict[str, tuple[type, bool, object]]:
    """`key -> (kind, nullable, default)` for every int, float or bool leaf of the default config's
    `seed` and `trainer` (conf/trainer/default.yaml), plus `DECLARED`."""
    out = {k: (kind, nullable, None) for k, (kind, nullable) in DECLARED.items()}

    def walk(prefix: str, node) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            elif type(v) in KINDS.values() and f"{prefix}{k}" not in OWN_CHECK:
                out[f"{prefix}{k}"] = (type(v), False, v)

    walk("", {"seed": OmegaConf.load(CONF / "config.yaml").seed})
    walk("trainer.", OmegaConf.to_container(OmegaConf.load(CONF / "trainer" / "default.yaml")))
    return out


def check_types(cfg) -> None:
    """Every key of `default_kinds` that the run's config sets holds a value of its type."""
    for key, (kind, nullable, default) in default_kinds().items():
        node, leaf = key.rsplit(".", 1) if "." in key else ("", key)
        parent = OmegaConf.select(cfg, node) if node else cfg
        if parent is not None and leaf in parent and not OmegaConf.is_missing(parent, leaf):
            check_value(key, parent[leaf], kind, nullable, default)


def check_paths(cfg) -> None:
    """The cache folder (when the cache is on) can be created and written to."""
    if not cfg.cache.enabled:
        return
    try:
        root = Path(str(cfg.paths.cache_dir)).expanduser()
    except InterpolationResolutionError:  # composed outside a Hydra run (tests): no folder to check
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        raise ConfigError(
            f"paths.cache_dir={cfg.paths.cache_dir} is not writable ({e.strerror or e}): set paths.cache_dir "
            "to a folder you can write, or cache.enabled=false"
        ) from None


def validate(cfg) -> tuple[Attack, Defense]:
    """Check the whole config; return the instantiated attack and defense."""
    d, t = cfg.dataset, cfg.trainer
    for key in ("num_classes", "channels", "image_size"):
        if key not in d:
            raise ConfigError(f"dataset.{key} is missing: every dataset config declares it")
    check_types(cfg)
    for key in ("num_classes", "channels", "image_size"):
        if int(d[key]) < 1:
            raise ConfigError(f"dataset.{key}={d[key]} must be at least 1")
    if int(d.num_classes) < 2:
        raise ConfigError(f"dataset.num_classes={d.num_classes} must be at least 2")
    source = d.source
    if "root" in d.keys() and OmegaConf.is_missing(d, "root"):
        raise ConfigError(f"dataset.root is not set: dataset={d.name} needs dataset.root=<folder or file>")
    root = source.get("root")
    if "root" in source and not source.get("download", False):
        if not root or not Path(str(root)).expanduser().exists():
            raise ConfigError(
                f"dataset.root={root} does not exist: set dataset.root to the folder holding "
                f"the {d.name} data" + (" (or dataset.download=true when online)" if "download" in source else "")
            )
    if t.accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={t.accelerator!r} is unknown: use one of {', '.join(ACCELERATORS)}")
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator=gpu but no CUDA GPU is visible: use trainer=cpu or trainer=default")
    if str(t.precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={t.precision} is unknown: use one of {', '.join(PRECISIONS)}")
    if t.devices not in (1, "1", "auto") and t.devices != [0]:
        raise ConfigError(f"trainer.devices={t.devices}: runs use one device (pick it with CUDA_VISIBLE_DEVICES)")
    for key in ("max_epochs", "batch_size", "eval_batch_size"):
        if int(t[key]) < 1:
            raise ConfigError(f"trainer.{key}={t[key]} must be at least 1")
    for key in ("train_subset", "test_subset"):
        if t.get(key) is not None and int(t[key]) < 1:
            raise ConfigError(f"trainer.{key}={t[key]} must be a positive count or null")
    if t.get("compile", "auto") not in COMPILE:
        raise ConfigError(f"trainer.compile={t.compile} is unknown: use auto (on CUDA only), true or false")
    if t.get("compile_mode", "default") not in COMPILE_MODES:
        raise ConfigError(f"trainer.compile_mode={t.compile_mode} is unknown: use one of {', '.join(COMPILE_MODES)}")
    if t.get("lr_batch_size") is not None and int(t.lr_batch_size) < 1:
        raise ConfigError(f"trainer.lr_batch_size={t.lr_batch_size} must be a batch size >= 1 or null")
    o = t.optimizer
    if not float(o.lr) > 0:
        raise ConfigError(f"trainer.optimizer.lr={o.lr} must be positive (for example 0.01)")
    if float(o.get("weight_decay") or 0) < 0:
        raise ConfigError(f"trainer.optimizer.weight_decay={o.weight_decay} must be at least 0")
    if not 0 <= float(o.get("momentum") or 0) < 1:
        raise ConfigError(f"trainer.optimizer.momentum={o.momentum} must be in [0, 1)")
    check_paths(cfg)

    model = build_model(
        cfg.model, int(d.num_classes), int(d.channels), (0.5,) * int(d.channels), (0.5,) * int(d.channels)
    )
    configure_optimizers(model.parameters(), OmegaConf.to_container(t.optimizer, resolve=True), 1)
    attack_cfg, used_assets = resolve_attack_config(cfg.attack, cfg.get("assets"))  # `asset:NAME` -> its file
    attack = instantiate_checked("attack", attack_cfg, num_classes=int(d.num_classes))
    attack.assets = used_assets
    attack.check(int(d.num_classes), (int(d.channels), int(d.image_size), int(d.image_size)))
    # not recursive: a defense's nested model configs (D-ST / D-BR's `sd.model`) stay configs
    defense = instantiate_checked("defense", cfg.defense, _recursive_=False)
    if defense.needs_clean and not defense.clean_fraction > 0:
        raise ConfigError(
            f"defense={defense.name} needs trusted clean data: set defense.clean_fraction > 0 (for example 0.05)"
        )
    if not 0 <= defense.clean_fraction < 1:
        raise ConfigError(f"defense.clean_fraction={defense.clean_fraction} must be a fraction in [0, 1)")
    for group in ("attack", "defense"):  # TrojanNN's and the feature-space defenses' layer exists in cfg.model
        if cfg[group].get("layer") not in (None, LAST_MAP):
            resolve_layer(model, cfg[group].layer, group=group)
    return attack, defense
