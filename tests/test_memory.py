"""Long memory of context models (`dataset.memory`): the GJR-GARCH recursions are
causal, the model at initialisation is the fitted GJR-GARCH(1,1)-t exactly, the
defaults recover a GJR-GARCH series with skewed-t innovations, and a long-memory run
saves, resumes, forecasts and backtests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import perturb, run_console
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from scipy import stats

from glow_train import Glow1D
from glow_train.cli import eval_main, sample_main, train_main
from glow_train.data.table import load_table
from glow_train.data.windows import padded_rows
from glow_train.training import train


def skew_t_log_pdf(z: np.ndarray, df: float, xi: float) -> np.ndarray:
    """Log-density of a Fernández–Steel skewed Student-t (`xi` < 1: a longer left tail)
    scaled to mean 0 and variance 1."""
    m, s = _skew_t_moments(df, xi)
    e = m + s * z
    scaled = np.where(e >= 0, e / xi, e * xi)
    return np.log(s) + np.log(2 / (xi + 1 / xi)) + stats.t.logpdf(scaled, df)


def _skew_t_moments(df: float, xi: float) -> tuple[float, float]:
    abs_t = 2 * math.sqrt(df) * math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2))
    abs_t /= math.sqrt(math.pi) * (df - 1)  # E|T|
    mean = abs_t * (xi - 1 / xi)
    second = df / (df - 2) * (xi**4 - xi**2 + 1) / xi**2
    return mean, math.sqrt(second - mean**2)


def gjr_skew_t(
    n: int, seed: int, omega=0.02, alpha=0.03, gamma=0.12, beta=0.88, df=6.0, xi=0.8
) -> tuple[np.ndarray, np.ndarray]:
    """Returns of a GJR-GARCH(1,1) with unit-variance skewed-t innovations, and the
    exact log-density of each given its whole past."""
    rng = np.random.default_rng(seed)
    m, s = _skew_t_moments(df, xi)
    size = np.abs(rng.standard_t(df, size=n + 500))
    up = rng.random(n + 500) < xi**2 / (1 + xi**2)
    z = (np.where(up, xi * size, -size / xi) - m) / s
    var = omega / (1 - alpha - gamma / 2 - beta)
    out, logp = np.empty(n + 500), np.empty(n + 500)
    for t in range(n + 500):
        sd = math.sqrt(var)
        out[t] = sd * z[t]
        logp[t] = skew_t_log_pdf(np.array(z[t]), df, xi) - math.log(sd)
        var = omega + (alpha + gamma * (out[t] < 0)) * out[t] ** 2 + beta * var
    return out[500:], logp[500:]


def gjr_t_log_likelihood(r, mu, omega, alpha, gamma, beta, v, df, ar=()) -> np.ndarray:
    """Closed-form one-step log-densities of GJR-GARCH(1,1) with unit-variance t
    innovations, the recursion started at `v`, around `mu` plus an autoregression on
    the last `len(ar)` returns (`ar[0]` the oldest's coefficient; none before the start)."""
    var, out, lags = v, np.empty(len(r)), len(ar)
    c = math.sqrt((df - 2) / df)
    for t, x in enumerate(r):
        e = x - mu
        loc = mu + sum(ar[j] * r[t - lags + j] for j in range(lags) if t - lags + j >= 0)
        sd = math.sqrt(var) * c
        out[t] = stats.t.logpdf((x - loc) / sd, df) - math.log(sd)
        var = omega + (alpha + gamma * (e < 0)) * e * e + beta * var
    return out


def _model(memory: int, context: int = 3, coupling: str = "spline") -> Glow1D:
    torch.manual_seed(0)
    model = Glow1D(
        dim=1,
        K=2,
        hidden_features=8,
        coupling=coupling,
        lu=True,
        context_dims=context,
        prior="student_t",
        memory=memory,
        recursions=3,
    )
    return model.double()


def _items(series: np.ndarray, past: int) -> torch.Tensor:
    """Item `t`: the `past` values before step `t` (NaN before the start), then step `t`."""
    return torch.from_numpy(padded_rows(series[:, None], np.arange(len(series)) - past, past + 1))


def test_the_memory_is_causal():
    """Changing a return changes the density of that step and later ones, never of an
    earlier step (a trained-looking model: every parameter moved)."""
    series = np.random.default_rng(0).standard_t(5, size=80)
    model = _model(memory=40)
    model.initialize(_items(series, 43))
    perturb(model, 0.1)
    before = model.log_prob(_items(series, 43))
    series[50] += 3.0
    after = model.log_prob(_items(series, 43))
    assert torch.equal(before[:50], after[:50])
    assert (before[50:52] != after[50:52]).all()
    assert torch.isfinite(before).all()


def test_at_initialisation_the_model_is_the_fitted_gjr_garch_t():
    """With its couplings as initialised, a long-memory model's log-density of every
    return is the closed-form GJR-GARCH(1,1)-t one (with an AR(3) mean: the context)
    with the parameters of its own maximum-likelihood fit, and that fit is at least
    as likely as the true ones."""
    rng = np.random.default_rng(3)
    n, (omega, alpha, gamma, beta, df) = 1500, (0.05, 0.04, 0.1, 0.85, 6.0)
    eps = rng.standard_t(df, size=n) * math.sqrt((df - 2) / df)
    r, var = np.empty(n), omega / (1 - alpha - gamma / 2 - beta)
    for t in range(n):
        r[t] = math.sqrt(var) * eps[t]
        var = omega + (alpha + gamma * (r[t] < 0)) * r[t] ** 2 + beta * var
    model = _model(memory=n)  # every item holds the whole past
    items = _items(r, n + 3)
    model.initialize(items)
    with torch.no_grad():
        theta = {k: float(v[0, 0]) for k, v in model.memory.parameters_of().items()}
        fitted_df, mu = float(model.prior.log_df.exp()), float(model.memory.mean)
        ar = model.memory.autoregression[:, 0].numpy()
    closed = gjr_t_log_likelihood(r, mu, **theta, df=fitted_df, ar=ar)
    got = model.log_prob(items).detach().numpy()
    np.testing.assert_allclose(got, closed, atol=1e-6)
    true = gjr_t_log_likelihood(r, 0.0, omega, alpha, gamma, beta, var, df)
    assert closed.sum() >= true.sum() - 1e-3
    assert theta["beta"] == pytest.approx(beta, abs=0.1) and 4 < fitted_df < 12


def _compose(overrides: list[str]):
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        return compose("train", overrides)


@pytest.mark.parametrize(
    "n", [pytest.param(4000, id="small"), pytest.param(20000, marks=pytest.mark.slow)]
)
def test_gjr_skew_t_conditional_density_is_near_the_true_one(tmp_path, n):
    """The defaults (`dataset.context=20`, nothing else) on a GJR-GARCH(1,1) series with
    skewed-t innovations: the test figure is within 0.03 nats of the true conditional
    density, averaged over the same test returns."""
    values, logp = gjr_skew_t(n, seed=2)
    path = tmp_path / "series.csv"
    np.savetxt(path, values[:, None], header="v", comments="", fmt="%.10g")
    overrides = [
        "dataset=csv",
        f"dataset.path={path}",
        "dataset.context=20",
        f"run_dir={tmp_path / 'run'}",
        "train.progress=false",
        "device=cpu",
        "precision=fp32",
    ]
    result = train(_compose(overrides))
    test = load_table(OmegaConf.to_container(_compose(overrides).dataset)).parts["test"]
    exact = -logp[-len(test) :].mean()
    assert result.best_test_score == pytest.approx(float(exact), abs=0.03)


@pytest.fixture(scope="module")
def memory_run(tmp_path_factory):
    """A long-memory context model trained briefly on a simulated price CSV."""
    folder = tmp_path_factory.mktemp("memory")
    r, _ = gjr_skew_t(700, seed=5)
    prices = 100 * np.exp(np.cumsum(0.01 * r))
    np.savetxt(folder / "prices.csv", prices[:, None], header="close", comments="", fmt="%.8f")
    args = [
        "dataset=csv",
        "dataset.path=prices.csv",
        "dataset.columns=[close]",
        "dataset.transform=log_return",
        "dataset.context=5",
        "dataset.memory=100",
        "train.max_steps=20",
        "train.progress=false",
        "device=cpu",
        "run_dir=run",
    ]
    status, _, err = run_console(train_main, args, folder)
    assert status == 0, err
    return folder, args


def test_a_long_memory_model_saves_loads_and_resumes(memory_run):
    from glow_train import load

    folder, args = memory_run
    last = folder / "run" / "last.pt"
    objective = load(last)
    assert objective.flow.memory is not None and objective.flow.context_dims == 105
    cfg = OmegaConf.to_container(_compose(args).dataset) | {"path": str(folder / "prices.csv")}
    items = torch.from_numpy(load_table(cfg).parts["test"]).float()
    standardize = objective.objective.standardize
    first = objective.flow.log_prob(standardize(items)[0])
    again = load(last).flow.log_prob(standardize(items)[0])
    assert torch.isfinite(first).all() and torch.equal(first, again)
    kept = [a for a in args if not a.startswith("train.max_steps")]
    status, _, err = run_console(train_main, [*kept, "ckpt=auto", "train.max_steps=30"], folder)
    assert status == 0, err
    assert torch.load(last, weights_only=True)["step"] == 30


def test_forecast_and_backtest_of_a_long_memory_model(memory_run):
    folder, _ = memory_run
    ckpt = folder / "run" / "best.pt"
    status, _, err = run_console(
        sample_main, [f"ckpt={ckpt}", "mode=forecast", "horizon=10", "n=200", "out=fc"], folder
    )
    assert status == 0, err
    table = np.loadtxt(folder / "fc" / "forecast.csv", delimiter=",", skiprows=1)
    assert table.shape == (200 * 10, 3) and np.isfinite(table).all() and (table[:, 2] > 0).all()
    status, _, err = run_console(
        eval_main, [f"ckpt={ckpt}", "backtest=var", "backtest_samples=200", "out=bt"], folder
    )
    assert status == 0, err
    result = json.loads((folder / "bt" / "backtest.json").read_text())
    rows = result["methods"]["glow1d"]
    assert all(0 <= r["exceedances"] <= result["test_steps"] for r in rows)


def test_the_fan_widens_after_a_shock_and_narrows_back():
    """A long-memory model at initialisation (a GJR-GARCH-t): paths drawn after a large
    fall spread wider at first than paths after a calm spell, and the gap shrinks along
    the horizon as the volatility decays."""
    from glow_train.data.spec import DataSpec
    from glow_train.series.forecast import draw_paths

    r = 0.01 * gjr_skew_t(800, seed=4)[0]
    model = _model(memory=300).float()
    model.initialize(_items(r, 303).float())
    model.eval()
    spec = DataSpec(
        "vector",
        (304,),
        None,
        series=("r",),
        loc=[0.0] * 304,
        scale=[1.0] * 304,
        window=1,
        context=3,
        memory=300,
    )
    calm = r[-303:].copy()[:, None] * 0.5
    shock = calm.copy()
    shock[-1] = -0.08
    gen = torch.Generator().manual_seed(0)
    spread = {}
    for name, past in (("calm", calm), ("shock", shock)):
        paths = draw_paths(model, spec, past, horizon=40, n=1000, generator=gen)[:, :, 0]
        spread[name] = paths.std(axis=0)
    ratio = spread["shock"] / spread["calm"]
    assert ratio[0] > 2 and ratio[-5:].mean() < 0.8 * ratio[0]
