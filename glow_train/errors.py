"""Exceptions that carry a message meant for the user.

The command-line layer prints a `GlowError` as one line and exits with a
non-zero status instead of showing a traceback; library callers can catch it
like any other exception. The checks that raise them for single values are in
`glow_train.validate`.
"""


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
