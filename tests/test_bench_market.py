"""scripts/bench_market.py: Hansen's skewed t against closed forms, the simulated
GJR-GARCH series' true density against `arch`'s filter, and the table's code path on
a short series with a tiny 1-D Glow."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench_market  # noqa: E402
from garch_fits import standardized_t_logpdf  # noqa: E402
from market_series import (  # noqa: E402
    GJR_SKEWT,
    gjr_skewt_returns,
    skewt_cdf,
    skewt_constants,
    skewt_logpdf,
    skewt_ppf,
    skewt_tail_mean,
)

SKEWS = [(6.0, -0.2), (4.5, 0.4), (10.0, 0.0)]


def _moment(k: int, eta: float, lam: float, upper: float = math.inf) -> float:
    """$\\int z^k g(z) dz$ up to `upper`, split at the mode where the density kinks."""
    a, b, _ = skewt_constants(eta, lam)
    mode = -a / b

    def f(z):
        return z**k * math.exp(skewt_logpdf(z, eta, lam))

    if upper <= mode:
        return integrate.quad(f, -math.inf, upper)[0]
    return integrate.quad(f, -math.inf, mode)[0] + integrate.quad(f, mode, upper)[0]


@pytest.mark.parametrize(("eta", "lam"), SKEWS)
def test_skewed_t_is_a_density_with_mean_0_and_variance_1(eta, lam):
    assert _moment(0, eta, lam) == pytest.approx(1.0, abs=1e-9)
    assert _moment(1, eta, lam) == pytest.approx(0.0, abs=1e-9)
    assert _moment(2, eta, lam) == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize(("eta", "lam"), SKEWS)
def test_skewed_t_distribution_quantile_and_tail_mean(eta, lam):
    z = np.array([-4.0, -1.3, -0.1, 0.0, 0.7, 3.0])
    integrals = [_moment(0, eta, lam, v) for v in z]
    np.testing.assert_allclose(skewt_cdf(z, eta, lam), integrals, atol=1e-9)
    u = np.array([1e-4, 0.01, 0.05, 0.5, 0.9, 0.9999])
    np.testing.assert_allclose(skewt_cdf(skewt_ppf(u, eta, lam), eta, lam), u, rtol=1e-9)
    for level in (0.01, 0.05):
        q = float(skewt_ppf(level, eta, lam))
        tail = _moment(1, eta, lam, q) / level
        assert skewt_tail_mean(level, eta, lam) == pytest.approx(tail, rel=1e-7)


def test_skewed_t_without_skew_is_the_unit_variance_student_t():
    z = np.linspace(-6, 6, 25)
    np.testing.assert_allclose(skewt_logpdf(z, 5.0, 0.0), standardized_t_logpdf(z, 5.0))


def test_skewed_t_is_hansens_as_arch_writes_it():
    distribution = pytest.importorskip("arch.univariate.distribution")
    z = np.linspace(-5, 5, 41)
    for eta, lam in SKEWS:
        theirs = distribution.SkewStudent().loglikelihood(
            np.array([eta, lam]), z, np.ones_like(z), individual=True
        )
        np.testing.assert_allclose(skewt_logpdf(z, eta, lam), theirs, atol=1e-12)


def test_simulated_series_true_density_is_the_gjr_skewt_filter_of_arch():
    """The generator's own log-densities equal those of arch's GJR-GARCH(1,1) with
    skewed-t innovations, fixed at the true parameters (once arch's start has faded)."""
    arch = pytest.importorskip("arch")
    from arch.univariate.distribution import SkewStudent

    sim = gjr_skewt_returns(3000, seed=4)
    p, scale = GJR_SKEWT, 100.0
    model = arch.arch_model(
        scale * sim["returns"], mean="Constant", vol="GARCH", p=1, o=1, q=1, dist="skewt"
    )
    params = [scale * p["mu"], scale**2 * p["omega"], p["alpha"], p["gamma"], p["beta"]]
    fixed = model.fix([*params, p["eta"], p["lam"]])
    sigma = np.asarray(fixed.conditional_volatility) / scale
    logp = SkewStudent().loglikelihood(
        np.array([p["eta"], p["lam"]]),
        np.asarray(fixed.resid),
        np.square(scale * sigma),
        individual=True,
    ) + math.log(scale)  # the density of r is 100 times that of 100 r
    late = slice(1500, None)  # arch starts from a backcast: 0.98^1500 of it is left
    np.testing.assert_allclose(sigma[late], sim["sd"][late], rtol=1e-9)
    np.testing.assert_allclose(logp[late], sim["logp"][late], rtol=1e-9, atol=1e-9)


def test_bench_table_on_a_short_series_with_a_tiny_glow(tmp_path):
    pytest.importorskip("arch")
    args = argparse.Namespace(
        length=600,
        seed=1,
        no_glow=False,
        samples=100,
        glow=[
            "model.K=2",
            "model.hidden_features=16",
            "train.max_steps=20",
            "train.eval_every_steps=10",
            "precision=fp32",
        ],
    )
    rows = bench_market.bench_series("gjr_skewt", tmp_path, args)
    by = {r["method"]: r for r in rows}
    assert set(by) == {"truth", "iid_t", *bench_market.ARCH_MODELS, "historical", "glow1d"}
    # every method on the same 120 test returns (the last 20 % of 600)
    sim = gjr_skewt_returns(600, 1)
    assert all(r["test_returns"] == 120 for r in rows)
    assert by["truth"]["nats"] == pytest.approx(-sim["logp"][-120:].mean())
    glow = by["glow1d"]
    assert glow["nats"] == pytest.approx(glow["eval_nll"])  # glow-eval's figure
    assert glow["se"] == pytest.approx(glow["eval_stderr_items"])
    for row in rows:
        assert [r["level"] for r in row["risk"]] == [0.01, 0.05]
        assert all(0 <= r["kupiec_p"] <= 1 and 0 <= r["es_z2_p"] <= 1 for r in row["risk"])
    assert "nats" not in by["historical"] and by["gjr_garch_t"]["vs_gjr"] == 0.0
    table = bench_market.format_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[-1].startswith("| gjr_skewt | 1-D Glow")
    json.dumps(rows, default=bench_market._plain)  # the --json file
