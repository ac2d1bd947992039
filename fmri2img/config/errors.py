"""The configuration's error: a file or value is invalid, and the message names the field and the fix."""
from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the field and the fix."""
