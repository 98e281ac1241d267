"""The risk statistics of `glow_train.series.risk` against hand-computed answers and
the properties their tests rely on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from glow_train.series.risk import (
    christoffersen,
    coverage,
    empirical_quantile,
    es_z2,
    es_z2_test,
    student_t_quantile,
    student_t_var_es,
)


def test_christoffersen_is_the_markov_likelihood_ratio_by_hand():
    # transitions: 0->0 seven times, 0->1 never, 1->1 twice, 1->0 once
    exceed = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    log_null = 8 * math.log(0.8) + 2 * math.log(0.2)  # pooled: 2 exceedances in 10 steps
    log_alt = 1 * math.log(1 / 3) + 2 * math.log(2 / 3)  # pi01 = 0, pi11 = 2/3
    lr, p = christoffersen(exceed)
    assert lr == pytest.approx(-2 * (log_null - log_alt))
    assert p == pytest.approx(stats.chi2.sf(lr, 1))
    # exceedances as likely after an exceedance as after a calm step: no evidence
    assert christoffersen(np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0], dtype=bool))[0] == 0.0


def test_z2_by_hand():
    returns = np.array([-3.0, 1.0, -1.0, 0.5])
    var, es = np.full(4, 2.0), np.full(4, 2.5)
    # one exceedance (-3); -1 is inside the VaR: 1 + (-3 / 2.5) / (4 * 0.25)
    assert es_z2(returns, var, es, 0.25) == pytest.approx(-0.2)
    row = coverage(returns, var, es, 0.25)
    assert row["exceedances"] == 1 and row["es_z2"] == pytest.approx(-0.2)
    assert row["es_z2_p"] is None


def test_student_t_quantile_matches_its_var_and_es():
    mean, sd, nu, level = np.array([0.001, -0.002]), np.array([0.01, 0.03]), 5.0, 0.05
    var, es = student_t_var_es(mean, sd, nu, level)
    q = student_t_quantile(mean, sd, nu)
    np.testing.assert_allclose(q(np.full(2, level), np.arange(2)), -var)
    # ES is the mean of the quantile function below the level
    u = (np.arange(20000) + 0.5) / 20000 * level
    for step in range(2):
        tail = q(u, np.full(len(u), step)).mean()
        assert tail == pytest.approx(-es[step], rel=2e-3)


def test_empirical_quantile_is_the_order_statistic():
    draws = np.array([[3.0, 1.0, 2.0, 4.0], [8.0, 5.0, 7.0, 6.0]])
    q = empirical_quantile(draws)
    assert q(np.array([0.0, 0.3, 0.99]), np.array([0, 1, 1])).tolist() == [1.0, 6.0, 8.0]
    shared = empirical_quantile(draws[:1])  # one row serves every step
    assert shared(np.array([0.5, 0.5]), np.array([0, 7])).tolist() == [3.0, 3.0]


@pytest.mark.parametrize("level", [0.01, 0.05])
def test_z2_test_accepts_the_truth_and_rejects_understated_tails(level):
    rng = np.random.default_rng(3)
    n, nu = 2000, 5.0
    sd = np.exp(rng.normal(scale=0.5, size=n)) * 0.01  # a different scale every step
    returns = sd * rng.standard_t(nu, size=n) * math.sqrt((nu - 2) / nu)
    var, es = student_t_var_es(np.zeros(n), sd, nu, level)
    z2, p = es_z2_test(returns, var, es, level, student_t_quantile(np.zeros(n), sd, nu))
    assert abs(z2) < 0.3 and p > 0.05
    # forecasts with half the true scale: too many, too deep exceedances
    half = student_t_var_es(np.zeros(n), sd / 2, nu, level)
    z2, p = es_z2_test(returns, *half, level, student_t_quantile(np.zeros(n), sd / 2, nu))
    assert z2 < -0.5 and p < 0.01


def test_z2_is_zero_on_average_under_the_forecasts():
    """E[Z2] = 0 when the returns follow the forecasts: the simulated null's mean."""
    n, nu, level = 500, 4.0, 0.05
    sd = np.linspace(0.5, 2.0, n)
    var, es = student_t_var_es(np.zeros(n), sd, nu, level)
    q = student_t_quantile(np.zeros(n), sd, nu)
    rng = np.random.default_rng(0)
    z2 = [es_z2(q(rng.uniform(size=n), np.arange(n)), var, es, level) for _ in range(400)]
    assert abs(np.mean(z2)) < 3 * np.std(z2) / math.sqrt(len(z2))
