"""The one error type a user sees without a traceback."""


class ConfigError(ValueError):
    """A bad config value; the message names the key to change and how."""
