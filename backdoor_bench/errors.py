"""The one error type a user sees without a traceback, instantiation that keeps it visible, and
the one type check every config value goes through.

A config value is checked against the type its consumer declares: the parameter of the class or
function a config group instantiates (`attack.poison_rate: float` in `Attack.__init__`), or, for
the keys no constructor takes (`trainer.*`, `seed`), the value the default config gives it
(`validate.py`). A value that does not convert stops the run with a message naming the key.
"""

from __future__ import annotations

import inspect
import math


class ConfigError(ValueError):
    """A bad config value; the message names the key to change and how."""


KINDS = {"int": int, "float": float, "bool": bool}
_WHAT = {int: "a whole number", float: "a number", bool: "true or false"}


def _plain(value):
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def converts(value, kind: type) -> bool:
    """Whether `value` is a `kind` without loss: an int also as an integral float or a numeric
    string ("30"); a float also as an int or a numeric string ("1e-3", which YAML reads as text);
    a bool only as true/false."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return False
    try:
        number = float(value)
    except ValueError:
        return False
    if not math.isfinite(number):
        return False
    if kind is int:
        return isinstance(value, int) or number.is_integer()
    return True


def check_value(key: str, value, kind: type, nullable: bool = False, default=None) -> None:
    """Raise a ConfigError naming `key` unless `value` is a `kind` (or null, when `nullable`)."""
    value = _plain(value)
    if value is None and nullable:
        return
    if value is not None and converts(value, kind):
        return
    shown = "null" if value is None else repr(value) if isinstance(value, str) else value
    hint = (
        f" (default: {str(default).lower() if isinstance(default, bool) else default})" if default is not None else ""
    )
    what = _WHAT[kind] + (" or null" if nullable else "")
    raise ConfigError(f"{key}={shown} is not {_WHAT[kind]}: set {key} to {what}{hint}")


def declared_kinds(target) -> dict[str, tuple[type, bool, object]]:
    """`name -> (kind, nullable, default)` for the parameters of `target` (a class: every
    `__init__` along its MRO, so `**kw` passed to a base class is covered; or a function) that are
    declared int, float or bool, by annotation (`float | None`) or, lacking one, by default."""
    fns = (
        [c.__dict__["__init__"] for c in target.__mro__ if "__init__" in c.__dict__]
        if inspect.isclass(target)
        else [target]
    )
    out: dict[str, tuple[type, bool, object]] = {}
    for fn in fns:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if p.name in out or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            default = None if p.default is p.empty else p.default
            ann = p.annotation
            if ann is p.empty:
                if type(default) in KINDS.values():
                    out[p.name] = (type(default), False, default)
                continue
            parts = {
                s.strip() for s in (ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))).split("|")
            }
            kinds = parts - {"None", "Optional"}
            if len(kinds) == 1 and (k := kinds.pop()) in KINDS:
                out[p.name] = (KINDS[k], "None" in parts or (p.default is not p.empty and default is None), default)
    return out


def check_node(group: str, node, target) -> None:
    """Check every key of config `node` that `target` declares as int, float or bool."""
    from omegaconf import OmegaConf

    kinds = declared_kinds(target)
    for key in node:
        if key in kinds and not (OmegaConf.is_config(node) and OmegaConf.is_missing(node, key)):
            kind, nullable, default = kinds[key]
            check_value(f"{group}.{key}", node[key], kind, nullable, default)


def instantiate_checked(group: str, node, **kwargs):
    """`hydra.utils.instantiate`, after `check_node` against the target's declared parameter types;
    a ConfigError raised inside stays a ConfigError (Hydra wraps it), and any other construction
    error becomes one that names the config group."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_object, instantiate

    if node is None or "_target_" not in node:
        raise ConfigError(f"{group} has no _target_: choose one of the configs in conf/{group}/")
    try:
        target = get_object(node._target_)
    except Exception:
        target = None  # instantiate names the bad _target_ below
    if target is not None:
        check_node(group, node, target)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"{group}: {cause or e}") from None
