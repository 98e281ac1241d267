"""GARCH-type baselines fitted with the `arch` package, shared by the benchmark scripts
(`bench_tabular.py`, `bench_market.py`): fit on the first part of a return series,
then filter the whole series with those parameters, so that each later return gets its
one-step density given its whole past.

Needs the `finance` extra (`pip install -e '.[finance]'`); `arch_filter` returns
`None` without it.
"""

from __future__ import annotations

import math
import time

import numpy as np

#: name -> (arch's `vol`, `o`): the asymmetric term of GJR-GARCH and EGARCH
VOLATILITY = {
    "garch_t": ("GARCH", 0),
    "gjr_garch_t": ("GARCH", 1),
    "egarch_t": ("EGARCH", 1),
}
SCALE = 100.0  # arch's optimiser prefers returns in percent


def standardized_t_logpdf(e, df: float):
    """Log-density of a Student-t scaled to unit variance (`df > 2`)."""
    const = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(math.pi * (df - 2))
    return const - (df + 1) / 2 * np.log1p(np.square(e) / (df - 2))


def arch_filter(returns: np.ndarray, n_fit: int, kind: str = "garch_t") -> dict | None:
    """A constant-mean model of `kind` (a key of `VOLATILITY`: GARCH(1,1), GJR-GARCH(1,1)
    or EGARCH(1,1) with its asymmetric term) with Student-t innovations, fitted on
    `returns[:n_fit]` and run through all of `returns` with those parameters.

    Returns:
        `None` when `arch` is not installed; else `mean`, `sd` (each return's one-step
        mean and conditional standard deviation), `nu`, `logp` (each return's
        log-density given its past), `params` and `seconds` (fit and filter).
    """
    try:
        from arch import arch_model
    except ImportError:
        return None
    vol, o = VOLATILITY[kind]
    start = time.perf_counter()
    y = SCALE * np.asarray(returns, dtype=np.float64)
    spec = {"mean": "Constant", "vol": vol, "p": 1, "o": o, "q": 1, "dist": "t"}
    params = arch_model(y[:n_fit], **spec).fit(disp="off").params
    sigma = np.asarray(arch_model(y, **spec).fix(params).conditional_volatility)
    nu, mu = float(params["nu"]), float(params["mu"])
    logp = standardized_t_logpdf((y - mu) / sigma, nu) - np.log(sigma) + math.log(SCALE)
    return {
        "mean": np.full(len(y), mu / SCALE),
        "sd": sigma / SCALE,
        "nu": nu,
        "logp": logp,
        "params": {k: float(v) for k, v in params.items()},
        "seconds": time.perf_counter() - start,
    }
