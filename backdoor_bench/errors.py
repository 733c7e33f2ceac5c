"""The one error type a user sees without a traceback, and instantiation that keeps it visible."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value; the message names the key to change and how."""


def instantiate_checked(group: str, node, **kwargs):
    """`hydra.utils.instantiate`, but a ConfigError raised inside stays a ConfigError (Hydra wraps
    it), and any other construction error becomes one that names the config group."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if node is None or "_target_" not in node:
        raise ConfigError(f"{group} has no _target_: choose one of the configs in conf/{group}/")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"{group}: {cause or e}") from None
