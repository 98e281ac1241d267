"""Exceptions that carry a message meant for the user.

The command-line layer prints a :class:`GlowError` as one line and exits with a
non-zero status instead of showing a traceback; library callers can catch it
like any other exception.
"""

import math
import numbers
from collections.abc import Sequence


class GlowError(Exception):
    """A problem the user can fix: bad input, a missing file, a wrong setting."""


class ConfigError(GlowError, ValueError):
    """An invalid configuration value (also a ``ValueError`` for library callers)."""


class DataError(GlowError):
    """A dataset that is missing, incomplete or unreadable."""


class CheckpointError(GlowError):
    """A checkpoint that is missing, truncated, foreign or incompatible."""


class NonFiniteError(GlowError):
    """A model whose outputs (log-likelihoods, samples) are not finite: a diverged run."""


def require_int(
    name: str, value: object, low: int, high: int | None = None, allow_none: bool = False
) -> int | None:
    """``value`` as an ``int`` if it is an integer in ``low..high`` (or ``None`` when
    allowed), else a :class:`ConfigError` naming the option and its valid range."""
    if value is None and allow_none:
        return None
    bounds = f">= {low}" if high is None else f"in {low}..{high}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer {bounds}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name} must be an integer {bounds}, got {value}")
    return int(value)


def require_numbers(
    name: str, value: object, example: str, low: float | None = None
) -> list[float]:
    """``value`` (a number or a list of them) as a non-empty list of finite floats, each
    ``>= low`` when given, else a :class:`ConfigError` naming the option (``example``
    shows a valid value, e.g. ``"0.7"`` or ``"[-1,0,1]"``)."""
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(values) == 0:
        raise ConfigError(f"{name} must name at least one value, e.g. {name}={example}")
    bound = "" if low is None else f" >= {low:g}"
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ConfigError(f"{name} must be a number{bound}, got {v!r}")
        if low is not None and v < low:
            raise ConfigError(f"{name} must be a number{bound}, got {v!r}")
        out.append(float(v))
    return out
