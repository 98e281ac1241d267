"""Checks of single values, one place for every layer: integers in a range, lists of
numbers, durations, bit depths. Each failure is one `ConfigError`
line naming the option as the user typed it.

Where the other kinds of input are checked: a whole run config in
`glow_train.training.checks.check_config` (its schema types in
`glow_train.config`), `dataset.*` in `glow_train.data.validate_dataset_config`
(helpers in `glow_train.data.checks`), checkpoints in
`glow_train.io.checkpoint.load_checkpoint` and `glow_train.likelihood.loading`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

from glow_train.errors import ConfigError, show

__all__ = ["require_int", "require_numbers", "parse_duration", "check_n_bits"]


def require_int(
    name: str, value: object, low: int, high: int | None = None, allow_none: bool = False
) -> int | None:
    """`value` as an `int` if it is an integer in `low..high` (or `None` when
    allowed), else a `ConfigError` naming the option and its valid range."""
    if value is None and allow_none:
        return None
    bounds = f">= {low}" if high is None else f"in {low}..{high}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer {bounds}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name} must be an integer {bounds}, got {show(value)}")
    return int(value)


def require_numbers(
    name: str, value: object, example: str, low: float | None = None
) -> list[float]:
    """`value` (a number or a list of them) as a non-empty list of finite floats, each
    `>= low` when given, else a `ConfigError` naming the option (`example`
    shows a valid value, e.g. `"0.7"` or `"[-1,0,1]"`)."""
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(values) == 0:
        raise ConfigError(f"{name} must name at least one value, e.g. {name}={example}")
    bound = "" if low is None else f" >= {show(low)}"
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ConfigError(f"{name} must be a number{bound}, got {show(v)}")
        if not math.isfinite(v):  # inf, nan: numbers, yet no setting means them
            raise ConfigError(
                f"{name} must be a finite number{bound}, e.g. {example}; got {show(v)}"
            )
        if low is not None and v < low:
            raise ConfigError(f"{name} must be a number{bound}, got {show(v)}")
        out.append(float(v))
    return out


def check_n_bits(n_bits: int) -> None:
    """A bit depth in 1..8."""
    require_int("n_bits", n_bits, 1, 8)


def parse_duration(value: Any) -> float | None:
    """`"120s"`, `"90m"`, `"2h"`, `"1.5h"` or plain seconds -> seconds (None stays None)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", str(value))
        if not match:
            raise ConfigError(
                f"train.time_limit={value!r} is not a duration; use e.g. 120s, 90m, 2h or seconds"
            )
        seconds = float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]
    if seconds <= 0:
        raise ConfigError(f"train.time_limit must be positive, got {show(value)}")
    return seconds
