"""Exceptions that carry a message meant for the user.

The command-line layer prints a `GlowError` as one line and exits with a
non-zero status instead of showing a traceback; library callers can catch it
like any other exception. The checks that raise them for single values are in
`glow_train.validate`; `show` writes the values they name.
"""

import math
import numbers
from collections.abc import Sequence


class GlowError(Exception):
    """A problem the user can fix: bad input, a missing file, a wrong setting."""


class ConfigError(GlowError, ValueError):
    """An invalid configuration value (also a `ValueError` for library callers)."""


class DataError(GlowError):
    """A dataset that is missing, incomplete or unreadable."""


class CheckpointError(GlowError):
    """A checkpoint that is missing, truncated, foreign or incompatible."""


class NonFiniteError(GlowError):
    """A model whose outputs (log-likelihoods, samples) are not finite: a diverged run."""


def show(value: object) -> str:
    """`value` as a message to the user shows it: a whole number as one (`200`, where
    a float-typed option holds `200.0`; with six or more trailing zeros as a power of
    ten, `2e11`, as the YAML writes it), other numbers in their shortest exact form
    (`0.0003`, `1e-08`, `inf`), a list element by element (`[0.9, 1]`), a boolean as
    the command line and the YAML write it (`true`), a string quoted (`'abc'`),
    anything else as `str` does."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return str(value)

    if isinstance(value, numbers.Integral):
        return _whole(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isfinite(number) and number.is_integer() and abs(number) < 2**53:
            return _whole(int(number))
        return repr(number)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Sequence):  # a list, a tuple, an OmegaConf ListConfig
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def _whole(number: int) -> str:
    """`200`, `300000`; `2e11`, `-1.5e9` (six or more trailing zeros)."""
    digits = str(abs(number))
    mantissa = digits.rstrip("0")
    if len(digits) - len(mantissa) < 6:
        return str(number)
    sign = "-" if number < 0 else ""
    point = f".{mantissa[1:]}" if len(mantissa) > 1 else ""
    return f"{sign}{mantissa[0]}{point}e{len(digits) - 1}"
