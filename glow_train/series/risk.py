r"""The statistics of a risk backtest: value-at-risk and expected shortfall of one-step
predictive distributions, and the tests of them against the returns that came.

VaR and ES are losses (positive when the quantile is below 0): at level $\alpha$,
$\mathrm{VaR}_\alpha = -q_\alpha$ and $\mathrm{ES}_\alpha = -E[r \mid r \le q_\alpha]$.
An exceedance is $r_t < -\mathrm{VaR}_{\alpha,t}$. Over $n$ steps with $x$ exceedances:

- Kupiec's unconditional coverage (POF) test,
  $LR = -2\log\frac{(1-\alpha)^{n-x}\alpha^x}{(1-\hat\pi)^{n-x}\hat\pi^x}$,
  $\hat\pi = x/n$, against $\chi^2_1$;
- Christoffersen's independence test, comparing the probabilities of an exceedance
  after a calm step and after an exceedance ($\pi_{01}, \pi_{11}$) with their pooled
  value, against $\chi^2_1$;
- Acerbi and Székely's $Z_2$ test of the expected shortfall,
  $$Z_2 = 1 + \sum_t \frac{r_t\, I_t}{n\,\alpha\,\mathrm{ES}_{\alpha,t}}, \qquad
  I_t = 1[r_t < -\mathrm{VaR}_{\alpha,t}],$$
  which is 0 on average when the predictive distributions are right and negative when
  the tail losses are larger than forecast (too many exceedances, or too deep ones).
  Its p-value, $P(Z_2 \le z_2)$ under the forecasts, is simulated: each step's return
  is drawn as $Q_t(u)$, $u$ uniform, from the forecast's quantile function $Q_t$
  (only the draws with $u < \alpha$ enter $Z_2$).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats

__all__ = [
    "LEVELS",
    "Quantile",
    "christoffersen",
    "coverage",
    "empirical_quantile",
    "es_z2",
    "es_z2_test",
    "kupiec",
    "student_t_quantile",
    "student_t_var_es",
    "var_es",
]

LEVELS = (0.01, 0.05)

#: a forecast's quantile function: `(u, steps) -> Q_{steps[i]}(u[i])`, one value per pair
Quantile = Callable[[np.ndarray, np.ndarray], np.ndarray]


def var_es(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """VaR and ES at `level` from `draws` `(T, S)` (one row per step), as losses."""
    q = np.quantile(draws, level, axis=1)
    tail = np.where(draws <= q[:, None], draws, np.nan)
    return -q, -np.nanmean(tail, axis=1)


def kupiec(exceed: np.ndarray, level: float) -> tuple[float, float]:
    """Kupiec's proportion-of-failures statistic and its chi-square(1) p-value."""
    n, x = len(exceed), int(exceed.sum())
    pi = x / n
    log_null = (n - x) * math.log(1 - level) + x * math.log(level)
    log_alt = (n - x) * _log(1 - pi) + x * _log(pi)
    lr = max(-2 * (log_null - log_alt), 0.0)
    return lr, float(stats.chi2.sf(lr, 1))


def christoffersen(exceed: np.ndarray) -> tuple[float, float]:
    """Christoffersen's independence statistic and its chi-square(1) p-value."""
    prev, curr = exceed[:-1].astype(int), exceed[1:].astype(int)
    n = {(a, b): int(((prev == a) & (curr == b)).sum()) for a in (0, 1) for b in (0, 1)}
    n0, n1 = n[0, 0] + n[0, 1], n[1, 0] + n[1, 1]
    pi01 = n[0, 1] / n0 if n0 else 0.0
    pi11 = n[1, 1] / n1 if n1 else 0.0
    pi = (n[0, 1] + n[1, 1]) / max(n0 + n1, 1)
    log_null = (n[0, 0] + n[1, 0]) * _log(1 - pi) + (n[0, 1] + n[1, 1]) * _log(pi)
    log_alt = (
        n[0, 0] * _log(1 - pi01)
        + n[0, 1] * _log(pi01)
        + n[1, 0] * _log(1 - pi11)
        + n[1, 1] * _log(pi11)
    )
    lr = max(-2 * (log_null - log_alt), 0.0)
    return lr, float(stats.chi2.sf(lr, 1))


def _log(p: float) -> float:
    """`log p` with `0 log 0 = 0` (the counts multiplying it are then 0)."""
    return math.log(p) if p > 0 else 0.0


def es_z2(returns: np.ndarray, var: np.ndarray, es: np.ndarray, level: float) -> float:
    """Acerbi and Székely's $Z_2$ of `returns` against the forecasts' VaR and ES at
    `level` (positive losses, one per step): 0 on average under the forecasts."""
    tail = np.where(returns < -var, returns, 0.0)
    return float(1.0 + np.sum(tail / es) / (len(returns) * level))


def es_z2_test(
    returns: np.ndarray,
    var: np.ndarray,
    es: np.ndarray,
    level: float,
    quantile: Quantile,
    reps: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """$Z_2$ and its one-sided p-value $P(Z_2 \\le z_2)$, simulated from the forecasts'
    quantile function `quantile` with `reps` series of returns.

    Args:
        returns: the returns that came, `(T,)`.
        var: the forecasts' VaR at `level`, `(T,)`, positive losses.
        es: the forecasts' ES at `level`, `(T,)`, positive losses.
        level: the tail probability $\\alpha$.
        quantile: `(u, steps) -> Q_steps(u)`, the forecast of step `steps[i]` at `u[i]`.
        reps: simulated series.
        seed: seed of the uniforms.

    Returns:
        `(z2, p)`: a small `p` says the forecasts understate the tail losses.
    """
    z2 = es_z2(returns, var, es, level)
    u = np.random.default_rng(seed).uniform(size=(reps, len(returns)))
    rep, step = np.nonzero(u < level)  # the simulated exceedances
    drawn = quantile(u[rep, step], step)
    sums = np.bincount(rep, weights=drawn / es[step], minlength=reps)
    simulated = 1.0 + sums / (len(returns) * level)
    return z2, float(np.mean(simulated <= z2))


def empirical_quantile(draws: np.ndarray) -> Quantile:
    """The quantile function of `draws` `(T, S)` per step (one row: the same for every
    step), the `floor(u S)`-th smallest draw."""
    ordered = np.sort(draws, axis=1)
    size = ordered.shape[1]

    def quantile(u: np.ndarray, steps: np.ndarray) -> np.ndarray:
        rows = steps if len(ordered) > 1 else np.zeros_like(steps)
        return ordered[rows, np.minimum((u * size).astype(int), size - 1)]

    return quantile


def student_t_quantile(mean: np.ndarray, sd: np.ndarray, nu: float) -> Quantile:
    """The quantile function of returns `mean + sd * T` per step, `T` a Student-t with
    `nu > 2` degrees of freedom scaled to unit variance."""
    unit = math.sqrt((nu - 2) / nu)

    def quantile(u: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return mean[steps] + sd[steps] * unit * stats.t.ppf(u, nu)

    return quantile


def student_t_var_es(
    mean: np.ndarray, sd: np.ndarray, nu: float, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """VaR and ES at `level` (positive losses) of returns `mean + sd * T`, `T` a
    Student-t with `nu > 2` degrees of freedom scaled to unit variance."""
    unit = math.sqrt((nu - 2) / nu)  # a standard t times this has unit variance
    t_q = stats.t.ppf(level, nu)
    tail = (nu + t_q**2) / (nu - 1) * stats.t.pdf(t_q, nu) / level  # -E[T | T <= t_q]
    return -(mean + sd * unit * t_q), -(mean - sd * unit * tail)


def coverage(
    returns: np.ndarray,
    var: np.ndarray,
    es: np.ndarray,
    level: float,
    quantile: Quantile | None = None,
) -> dict:
    """One row of the backtest table: the exceedances of `returns` below `-var` (VaR
    as a positive loss, one per step), their count against `level * n`, the mean VaR
    and ES, the Kupiec and Christoffersen statistics and p-values, and the ES test's
    $Z_2$ (its p-value when the forecasts' `quantile` function is given, else `None`)."""
    exceed = returns < -var
    lr_uc, p_uc = kupiec(exceed, level)
    lr_ind, p_ind = christoffersen(exceed)
    if quantile is None:
        z2, p_z2 = es_z2(returns, var, es, level), None
    else:
        z2, p_z2 = es_z2_test(returns, var, es, level, quantile)
    return {
        "level": level,
        "exceedances": int(exceed.sum()),
        "expected": level * len(returns),
        "rate": float(exceed.mean()),
        "mean_var": float(var.mean()),
        "mean_es": float(es.mean()),
        "kupiec_lr": lr_uc,
        "kupiec_p": p_uc,
        "christoffersen_lr": lr_ind,
        "christoffersen_p": p_ind,
        "es_z2": z2,
        "es_z2_p": p_z2,
    }
