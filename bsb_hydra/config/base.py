"""What every schema module shares: the error type and the range check that names the bad value."""
from __future__ import annotations

class ConfigError(ValueError):
    """A config value is out of range; the message names the key, the value and what is allowed."""


def positive(key: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{key}={value!r} is not allowed: it must be a positive number")



class InputError(ValueError):
    """A user's file or folder cannot serve the cell (missing, unreadable, a shape or class count that
    does not fit, an import path that does not resolve): raised before any training, its message one
    line naming the value and what was expected. The cell ends failed with it; a sweep goes on."""
