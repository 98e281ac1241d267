"""glow-sample mode=forecast and glow-eval backtest=var on a CSV of prices, and the
backtest's statistics against independent computations."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from helpers import run_console
from scipy import stats

from glow_train.cli import eval_main, sample_main, train_main
from glow_train.errors import ConfigError
from glow_train.series.backtest import backtest, christoffersen, kupiec, var_es


def test_kupiec_is_the_binomial_likelihood_ratio():
    exceed = np.zeros(250, dtype=bool)
    exceed[[3, 50, 100, 170, 240]] = True
    lr, p = kupiec(exceed, 0.01)
    expected = 2 * (stats.binom.logpmf(5, 250, 5 / 250) - stats.binom.logpmf(5, 250, 0.01))
    assert lr == pytest.approx(expected, rel=1e-9)
    assert p == pytest.approx(stats.chi2.sf(expected, 1))


def test_christoffersen_tells_clustered_from_spread_exceedances():
    clustered = np.array([False] * 90 + [True] * 10)
    spread = np.zeros(100, dtype=bool)
    spread[::10] = True
    assert christoffersen(clustered)[1] < 0.001
    assert christoffersen(spread)[1] > 0.1


def test_var_and_es_of_a_normal_sample():
    draws = np.random.default_rng(0).normal(size=(1, 400_000))
    var, es = var_es(draws, 0.05)
    assert var[0] == pytest.approx(-stats.norm.ppf(0.05), abs=0.01)
    assert es[0] == pytest.approx(stats.norm.pdf(stats.norm.ppf(0.05)) / 0.05, abs=0.01)


@pytest.fixture(scope="module")
def price_runs(tmp_path_factory):
    """A context model and a window model trained briefly on a simulated price CSV."""
    folder = tmp_path_factory.mktemp("prices")
    rng = np.random.default_rng(0)
    prices = 100 * np.exp(np.cumsum(0.01 * rng.standard_t(5, size=600)))
    np.savetxt(folder / "prices.csv", prices[:, None], header="close", comments="", fmt="%.6f")
    common = [
        "dataset=csv",
        "dataset.path=prices.csv",
        "dataset.columns=[close]",
        "dataset.transform=log_return",
        "train.max_steps=20",
        "train.progress=false",
        "device=cpu",
    ]
    runs = {}
    for name, extra in (("context", ["dataset.context=5"]), ("window", ["dataset.window=4"])):
        status, out, err = run_console(train_main, [*common, *extra, f"run_dir={name}"], folder)
        assert status == 0, err
        runs[name] = folder / name / "best.pt"
    return folder, prices, runs


def test_forecast_writes_price_paths_and_a_fan_chart(price_runs):
    folder, prices, runs = price_runs
    args = [f"ckpt={runs['context']}", "mode=forecast", "horizon=7", "n=30", "out=fc"]
    status, out, err = run_console(sample_main, args, folder)
    assert status == 0, err
    table = np.loadtxt(folder / "fc" / "forecast.csv", delimiter=",", skiprows=1)
    assert table.shape == (30 * 7, 3) and (table[:, 2] > 0).all()
    first = table[table[:, 1] == 1, 2]  # one step after the last price: near it
    assert np.all(np.abs(np.log(first / prices[-1])) < 0.2)
    assert (folder / "fc" / "forecast.png").stat().st_size > 0
    assert "in prices" in out


@pytest.mark.parametrize(
    "args, words",
    [
        (["mode=forecast", "horizon=0"], "horizon=0"),
        (["mode=forecast", "horizon=3", "context_end=2"], "context_end=2"),
        (  # an option the mode does not take is refused, not ignored
            ["mode=forecast", "horizon=3", "temperature=0.5"],
            "temperature= is not an option of mode=forecast (it takes horizon, n,",
        ),
    ],
)
def test_forecast_refuses_bad_input_in_one_line(price_runs, args, words):
    folder, _, runs = price_runs
    status, out, err = run_console(sample_main, [f"ckpt={runs['context']}", *args], folder)
    assert status != 0 and len(err.strip().splitlines()) == 1 and words in err


def test_series_tools_refuse_a_model_without_context(price_runs):
    folder, _, runs = price_runs
    for main, args in (
        (sample_main, ["mode=forecast", "horizon=3"]),
        (eval_main, ["backtest=var"]),
    ):
        status, out, err = run_console(main, [f"ckpt={runs['window']}", *args], folder)
        assert status != 0 and len(err.strip().splitlines()) == 1
        assert "without a context" in err and "dataset.context" in err


def test_backtest_writes_its_table_files_and_picture(price_runs):
    folder, _, runs = price_runs
    args = [f"ckpt={runs['context']}", "backtest=var", "backtest_samples=200", "out=bt"]
    status, out, err = run_console(eval_main, args, folder)
    assert status == 0, err
    result = json.loads((folder / "bt" / "backtest.json").read_text())
    assert {"glow1d", "historical"} <= set(result["methods"])
    for rows in result["methods"].values():
        assert [r["level"] for r in rows] == [0.01, 0.05]
        assert all(0 <= r["kupiec_p"] <= 1 and 0 <= r["christoffersen_p"] <= 1 for r in rows)
        assert all(r["es_z2"] <= 1 and 0 <= r["es_z2_p"] <= 1 for r in rows)  # the ES test
    steps = np.loadtxt(folder / "bt" / "backtest.csv", delimiter=",", skiprows=1)
    assert len(steps) == result["test_steps"] and math.isfinite(steps[:, 2].sum())
    assert (folder / "bt" / "backtest.png").stat().st_size > 0
    assert "Kupiec" in out and "ES Z2" in out


@pytest.mark.parametrize(
    "main, args, names",
    [
        (sample_main, ["mode=forecast", "horizon=3", "n=20"], ["forecast.csv", "forecast.png"]),
        (
            eval_main,
            ["backtest=var", "backtest_samples=100"],
            ["backtest.json", "backtest.csv", "backtest.png"],
        ),
    ],
)
def test_forecast_and_backtest_follow_the_output_policy(price_runs, main, args, names):
    """A folder the user named keeps its files unless overwrite=true; a file name with
    the first file's extension names it, the others beside it; the tool's own default
    folder is replaced on a rerun."""
    folder, _, runs = price_runs
    ckpt = f"ckpt={runs['context']}"
    out = f"policy_{names[0].split('.')[0]}"
    assert run_console(main, [ckpt, *args, f"out={out}", "seed=1"], folder)[0] == 0
    before = {n: (folder / out / n).read_bytes() for n in names}
    status, _, err = run_console(main, [ckpt, *args, f"out={out}", "seed=2"], folder)
    assert status != 0 and len(err.strip().splitlines()) == 1
    assert "overwrite=true" in err and f"out={out}" in err
    assert {n: (folder / out / n).read_bytes() for n in names} == before  # nothing lost
    more = [ckpt, *args, f"out={out}", "seed=2", "overwrite=true"]
    assert run_console(main, more, folder)[0] == 0
    assert (folder / out / names[0]).read_bytes() != before[names[0]]
    file = f"{out}_file{names[0][names[0].index('.') :]}"  # e.g. out=policy_forecast_file.csv
    assert run_console(main, [ckpt, *args, f"out={file}"], folder)[0] == 0
    stem = file.rsplit(".", 1)[0]
    assert all((folder / f"{stem}{n[n.index('.') :]}").exists() for n in names)
    for _ in range(2):  # the default folder beside the checkpoint: the tool's own
        assert run_console(main, [ckpt, *args], folder)[0] == 0


def test_plain_samples_of_a_context_model_point_to_forecast(price_runs):
    folder, _, runs = price_runs
    status, out, err = run_console(sample_main, [f"ckpt={runs['context']}", "n=3"], folder)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "mode=forecast" in err and "dataset.context" in err


def test_a_forecast_too_big_for_memory_is_refused_before_drawing(price_runs):
    """Issue 34: `horizon=100000 n=10000000` used to grow to 9 GB before anyone stopped
    it; now one line with the memory it would need, and nothing written."""
    folder, _, runs = price_runs
    args = [f"ckpt={runs['context']}", "mode=forecast", "horizon=100000", "n=10000000"]
    status, out, err = run_console(sample_main, [*args, "out=big"], folder)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(
        "glow-sample: error: n=10,000,000 paths x horizon=100,000 steps x 1 column(s) would "
        "need 29,802.3 GiB of memory, and "
    )
    assert "GiB are available; lower n or horizon (at most n=" in err
    assert not (folder / "big").exists()


def test_a_long_forecast_shows_its_progress(price_runs, monkeypatch):
    """The steps drawn go to a progress bar (tqdm, shown once a forecast has run 2 s)."""
    from glow_train.series import forecast as module

    bars = []

    class Bar(module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})
            self.steps = 0
            bars.append((kwargs, self))

        def update(self, k=1):
            self.steps += k

    monkeypatch.setattr(module, "tqdm", Bar)
    folder, _, runs = price_runs
    args = [f"ckpt={runs['context']}", "mode=forecast", "horizon=40", "n=3", "out=long"]
    status, out, err = run_console(sample_main, args, folder)
    assert status == 0, err
    ((kwargs, bar),) = bars
    assert kwargs["total"] == 40 and kwargs["delay"] == 2 and bar.steps == 40


def test_backtest_draws_refused_with_the_reason(price_runs):
    """Fewer than 100 draws per step: one line with the range and its reason, from the
    command and from the library function alike; `draws=` is glow-eval's figures'
    option, refused by the backtest; nothing is written."""
    folder, _, runs = price_runs
    ckpt = f"ckpt={runs['context']}"
    wanted = "backtest_samples must be an integer >= 100, got 50 (the model's draws per step"
    status, out, err = run_console(
        eval_main, [ckpt, "backtest=var", "backtest_samples=50", "out=few"], folder
    )
    assert status == 2 and len(err.strip().splitlines()) == 1 and wanted in err, err
    with pytest.raises(ConfigError, match=re.escape(wanted)):
        backtest(runs["context"], samples=50, out=folder / "few")
    status, out, err = run_console(eval_main, [ckpt, "backtest=var", "draws=50"], folder)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "draws= is not an option of backtest=var" in err and "backtest_samples" in err, err
    assert not (folder / "few").exists()
