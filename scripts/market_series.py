r"""The series of `bench_market.py`: real daily prices shipped inside installable
packages, and a simulated GJR-GARCH(1,1) with Hansen's skewed-t innovations whose
true conditional density is known.

Hansen's (1994) skewed t with $\eta > 2$ degrees of freedom and skew
$\lambda \in (-1, 1)$ has mean 0 and variance 1. With
$c = \Gamma(\frac{\eta+1}{2}) / (\sqrt{\pi(\eta-2)}\,\Gamma(\frac{\eta}{2}))$,
$a = 4\lambda c \frac{\eta-2}{\eta-1}$ and $b = \sqrt{1 + 3\lambda^2 - a^2}$,
$$g(z) = b c \left(1 + \frac{1}{\eta-2}
\left(\frac{bz + a}{1 \mp \lambda}\right)^2\right)^{-\frac{\eta+1}{2}},$$
with $1 - \lambda$ below the mode $-a/b$ and $1 + \lambda$ above it: each side is a
Student-t's half, stretched, so its distribution, quantile and tail mean follow from
the Student-t's. $\lambda < 0$ gives a longer left tail (large falls).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats


def skewt_constants(eta: float, lam: float) -> tuple[float, float, float]:
    """`(a, b, c)` of Hansen's skewed t."""
    c = math.exp(math.lgamma((eta + 1) / 2) - math.lgamma(eta / 2)) / math.sqrt(math.pi * (eta - 2))
    a = 4 * lam * c * (eta - 2) / (eta - 1)
    return a, math.sqrt(1 + 3 * lam**2 - a**2), c


def skewt_logpdf(z, eta: float, lam: float) -> np.ndarray:
    """The log-density of Hansen's skewed t (mean 0, variance 1) at `z`."""
    a, b, c = skewt_constants(eta, lam)
    z = np.asarray(z, dtype=np.float64)
    side = np.where(z < -a / b, 1 - lam, 1 + lam)
    inner = np.log1p(np.square((b * z + a) / side) / (eta - 2))
    return math.log(b * c) - (eta + 1) / 2 * inner


def _t_scale(eta: float) -> float:
    """A standard Student-t times this has the variance of $g$'s halves' kernel."""
    return math.sqrt((eta - 2) / eta)


def skewt_cdf(z, eta: float, lam: float) -> np.ndarray:
    """The distribution function of Hansen's skewed t."""
    a, b, _ = skewt_constants(eta, lam)
    z = np.asarray(z, dtype=np.float64)
    below = z < -a / b
    side = np.where(below, 1 - lam, 1 + lam)
    t = stats.t.cdf((b * z + a) / (side * _t_scale(eta)), eta)
    return np.where(below, (1 - lam) * t, (1 - lam) / 2 + (1 + lam) * (t - 0.5))


def skewt_ppf(u, eta: float, lam: float) -> np.ndarray:
    """The quantile function of Hansen's skewed t (the inverse of `skewt_cdf`)."""
    a, b, _ = skewt_constants(eta, lam)
    u = np.asarray(u, dtype=np.float64)
    below = u < (1 - lam) / 2
    side = np.where(below, 1 - lam, 1 + lam)
    v = np.where(below, u / (1 - lam), 0.5 + (u - (1 - lam) / 2) / (1 + lam))
    return (side * _t_scale(eta) * stats.t.ppf(v, eta) - a) / b


def skewt_tail_mean(level: float, eta: float, lam: float) -> float:
    """$E[Z \\mid Z \\le q_\\alpha]$ at `level` $\\alpha < (1-\\lambda)/2$ (the quantile
    below the mode): the Student-t's tail mean $-\\frac{\\eta + y^2}{\\eta - 1}
    \\frac{f(y)}{F(y)}$ at $y = F^{-1}(\\alpha / (1-\\lambda))$, mapped back."""
    if level >= (1 - lam) / 2:
        raise ValueError(f"level {level} is above the mode's probability {(1 - lam) / 2}")
    a, b, _ = skewt_constants(eta, lam)
    y = stats.t.ppf(level / (1 - lam), eta)
    t_tail = -(eta + y**2) / (eta - 1) * stats.t.pdf(y, eta) / stats.t.cdf(y, eta)
    return ((1 - lam) * _t_scale(eta) * t_tail - a) / b


#: the simulated series: an equity index's daily returns, persistent volatility
#: (alpha + gamma / 2 + beta = 0.98, unconditional sd 1.2 %), leverage, a long left tail
GJR_SKEWT = {
    "mu": 3e-4,
    "omega": 2.88e-6,
    "alpha": 0.02,
    "gamma": 0.10,
    "beta": 0.91,
    "eta": 6.0,
    "lam": -0.2,
}


def gjr_skewt_returns(n: int, seed: int, burn: int = 500, **params) -> dict[str, np.ndarray]:
    r"""`n` returns $r_t = \mu + \sigma_t z_t$, $z_t$ Hansen's skewed t (drawn by its
    quantile function), $\sigma_t^2 = \omega + (\alpha + \gamma 1[\epsilon_{t-1} < 0])
    \epsilon_{t-1}^2 + \beta \sigma_{t-1}^2$, $\epsilon_t = r_t - \mu$, after `burn`
    steps from the unconditional variance. Parameters: `GJR_SKEWT`, replaced by `params`.

    Returns:
        `returns`, `sd` (each $\sigma_t$), `mean` (each $\mu$) and `logp` (each return's
        true log-density given its whole past, $\log g(z_t) - \log\sigma_t$).
    """
    p = {**GJR_SKEWT, **params}
    rng = np.random.default_rng(seed)
    z = skewt_ppf(rng.uniform(size=n + burn), p["eta"], p["lam"])
    var = p["omega"] / (1 - p["alpha"] - p["gamma"] / 2 - p["beta"])
    sd, eps = np.empty(n + burn), np.empty(n + burn)
    for t in range(n + burn):
        sd[t] = math.sqrt(var)
        eps[t] = sd[t] * z[t]
        var = p["omega"] + (p["alpha"] + p["gamma"] * (eps[t] < 0)) * eps[t] ** 2 + p["beta"] * var
    logp = skewt_logpdf(z, p["eta"], p["lam"]) - np.log(sd)
    keep = slice(burn, None)
    return {
        "returns": p["mu"] + eps[keep],
        "sd": sd[keep],
        "mean": np.full(n, p["mu"]),
        "logp": logp[keep],
    }


def wti_prices() -> np.ndarray:
    """WTI crude oil daily prices (`arch.data.wti`, FRED's DCOILWTICO), missing days
    dropped."""
    from arch.data import wti

    return wti.load().dropna().to_numpy()[:, 0]


def write_prices(path: Path, prices: np.ndarray, column: str = "price") -> Path:
    """A CSV of one column of prices, with a header."""
    np.savetxt(path, prices[:, None], header=column, comments="", fmt="%.10g")
    return path
