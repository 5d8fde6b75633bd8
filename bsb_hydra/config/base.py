"""What every schema module shares: the error type and the range checks that name the bad value."""
from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A config value is out of range; the message names the key, the value and what is allowed."""


def positive(key: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not value > 0:  # "not >": NaN compares false both ways, and is refused too
        raise ConfigError(f"{key}={value!r} is not allowed: it must be a positive number")


def check_finite(obj: Any, prefix: str = "") -> None:
    """Every number of a resolved config is finite. NaN passes every ``value <= 0`` check (all its
    comparisons are false): benchmark.timeout_s=nan disabled the stall timeout, and a hung worker
    then hung the sweep for ever; train.lr=nan failed late, in training. Infinity is refused too:
    no key of the schemas means "unlimited" by it."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{prefix}{k}.")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, f"{prefix[:-1]}[{i}].")
    elif isinstance(obj, float) and not math.isfinite(obj):
        raise ConfigError(f"{prefix[:-1]}={obj} is not allowed: give a finite number")



class InputError(ValueError):
    """A user's file or folder cannot serve the cell (missing, unreadable, a shape or class count that
    does not fit, an import path that does not resolve): raised before any training, its message one
    line naming the value and what was expected. The cell ends failed with it; a sweep goes on."""
