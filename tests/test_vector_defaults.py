"""Vector data's defaults: early stopping, auto sizes, and p(window | context).

The known-answer tests fit the 1-D Glow with a context to simulated series whose
conditional density is known exactly and compare test figures on the same items.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import brute_force_logdet, perturb
from hydra import compose, initialize_config_module

from glow_train import Glow1D
from glow_train.data.table import load_table
from glow_train.errors import ConfigError, DataError
from glow_train.evaluation.figures import evaluate
from glow_train.training import train
from glow_train.training.sizing import resolve_auto, sized_value


def _compose(overrides: list[str]):
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        return compose("train", overrides)


def _table_cfg(path, **options) -> dict:
    cfg = dict(
        path=str(path),
        columns=None,
        header="auto",
        delimiter=",",
        dropna=False,
        window=None,
        context=None,
        stride=1,
        transform="none",
        val_size=0.1,
        test_size=0.2,
        split_seed=0,
    )
    cfg.update(options)
    return cfg


def _write_series(path, values: np.ndarray) -> None:
    np.savetxt(path, values[:, None], header="v", comments="", fmt="%.10g")


def ar1(n: int, phi: float, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n + 100)
    for t in range(1, n + 100):
        x[t] = phi * x[t - 1] + sigma * rng.normal()
    return x[100:]


# --------------------------------------------------------------------- the model


def test_context_log_det_is_the_jacobian_and_inverse_round_trips():
    torch.manual_seed(0)
    model = Glow1D(
        dim=3, K=2, hidden_features=8, coupling="affine", lu=True, context_dims=4
    ).double()
    perturb(model, 0.3)
    model.eval()
    context, x = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    h = model.encoder(context)
    z, logdet = model.forward_given(x, h)
    for i in range(5):  # one item at a time, with its own context
        hi = h[i : i + 1]
        ld = brute_force_logdet(lambda v, hi=hi: model.forward_given(v, hi)[0], x[i : i + 1])
        torch.testing.assert_close(logdet[i : i + 1], ld, atol=1e-10, rtol=0)
    torch.testing.assert_close(model._inverse_given(z, h), x, atol=1e-10, rtol=0)
    # the density is of x given the context: a different context changes it
    other = model.log_prob(torch.cat([context.flip(0), x], dim=1))
    assert not torch.allclose(other, model.log_prob(torch.cat([context, x], dim=1)))


def test_context_model_at_initialisation_is_a_known_gaussian():
    """Zero-initialised prior and couplings: each coupling scales by sigmoid(2), ActNorm
    and the linear map start as identities, so log p(x|c) has a closed form."""
    model = Glow1D(dim=2, K=3, hidden_features=8, coupling="affine", lu=True, context_dims=2)
    model = model.double().eval()
    for norm, _, _ in model.steps:
        norm.initialized.fill_(1)  # identity ActNorm
    x = torch.randn(4, 4, dtype=torch.float64)
    s = 1 / (1 + math.exp(-2.0))
    # each step scales the second half (1 of 2 dims) by s; the linear map is orthogonal
    # at initialisation, so only the log-determinants of the couplings and the prior's
    # N(0, I) on z count: log p = log N(z; 0, I) + K log s, with |z| computed by the model
    z, logdet = model.forward_given(x[:, 2:], model.encoder(x[:, :2]))
    torch.testing.assert_close(logdet, torch.full((4,), 3 * math.log(s), dtype=torch.float64))
    expected = -0.5 * z.pow(2).sum(1) - math.log(2 * math.pi) + 3 * math.log(s)
    torch.testing.assert_close(model.log_prob(x), expected)


# --------------------------------------------------------------------- the data


def test_context_items_take_their_past_from_before_the_part(tmp_path):
    path = tmp_path / "s.csv"
    # step t holds t plus a fraction (a ramp alone has no density: its windows are
    # linearly dependent), so the integer part tells the step
    _write_series(path, np.arange(1.0, 101.0) + np.random.default_rng(0).uniform(0, 0.5, 100))
    table = load_table(_table_cfg(path, context=3, window=2))
    test = np.floor(table.parts["test"])
    # the test part is the last 20 steps (81..100); its first window starts at 81
    assert test[0].tolist() == [78.0, 79.0, 80.0, 81.0, 82.0]
    assert test[-1].tolist() == [96.0, 97.0, 98.0, 99.0, 100.0]
    assert table.spec.context_dims == 3 and table.spec.num_dims == 5
    assert table.columns[:4] == ["v[-3]", "v[-2]", "v[-1]", "v[0]"]


def test_a_context_longer_than_the_series_is_one_line(tmp_path):
    path = tmp_path / "s.csv"
    _write_series(path, np.arange(1.0, 31.0))
    with pytest.raises(DataError) as err:
        load_table(_table_cfg(path, context=40))
    message = str(err.value)
    assert "\n" not in message and "dataset.context=40" in message and "30" in message


# --------------------------------------------------------------------- auto sizes


def test_sizing_rule_scales_with_the_split_and_clips():
    rule = {"base": 64, "exponent": 0.25, "min": 32, "max": 256, "multiple": 16}
    assert sized_value(rule, 1000, 1000, int) == 64
    assert sized_value(rule, 16000, 1000, int) == 128
    assert sized_value(rule, 10, 1000, int) == 32  # clipped
    assert sized_value(rule, 10**9, 1000, int) == 256
    drop = {"base": 0.15, "exponent": -0.5, "min": 0.0, "max": 0.3, "multiple": None}
    assert sized_value(drop, 100_000, 1000, float) == pytest.approx(0.015)


def test_csv_preset_resolves_auto_from_the_training_split(tmp_path):
    cfg = _compose(["dataset=csv", f"dataset.path={tmp_path / 'x.csv'}"])
    assert cfg.model.name == "glow1d" and cfg.train.early_stopping is not None
    small, chosen_small = resolve_auto(cfg, 300)
    large, chosen_large = resolve_auto(cfg, 100_000)
    assert set(chosen_small) == set(chosen_large) and "model.hidden_features" in chosen_small
    assert small.model.hidden_features < large.model.hidden_features
    assert small.model.dropout > large.model.dropout
    assert small.dataset.batch_size < large.dataset.batch_size


def test_context_models_take_the_context_sizing_rules(tmp_path):
    """With dataset.context the rules under sizing.context replace the model's depth and
    width (a smaller flow: its couplings see few values); the rest stays as it was."""
    table = _compose(["dataset=csv", f"dataset.path={tmp_path / 'x.csv'}"])
    series = _compose(["dataset=csv", f"dataset.path={tmp_path / 'x.csv'}", "dataset.context=20"])
    plain, chosen_plain = resolve_auto(table, 2780)
    given, chosen_given = resolve_auto(series, 2780)
    rules = series.sizing.context.model
    assert given.model.K == sized_value(rules.K, 2780, 1000, int) == 2
    assert given.model.hidden_features == sized_value(rules.hidden_features, 2780, 1000, int)
    assert (given.model.K, given.model.hidden_features) < (
        plain.model.K,
        plain.model.hidden_features,
    )
    for key in ("model.dropout", "dataset.batch_size", "train.max_steps"):
        assert chosen_given[key] == chosen_plain[key]
    # a context model decays its networks towards zero (towards its GJR-GARCH-t), a table not
    assert plain.train.weight_decay == 0.0 and given.train.weight_decay == 0.01
    named, chosen = resolve_auto(
        _compose(["dataset=csv", f"dataset.path={tmp_path / 'x.csv'}", "train.weight_decay=0"]),
        2780,
    )
    assert named.train.weight_decay == 0 and "train.weight_decay" not in chosen


def test_a_number_is_its_own_sizing_rule():
    assert sized_value(0.01, 10, 1000, float) == sized_value(0.01, 10**6, 1000, float) == 0.01
    with pytest.raises(ConfigError, match="needs base"):
        sized_value({"base": 1.0}, 10, 1000, float)


def test_the_prior_is_chosen_by_the_kind_of_vector_data(tmp_path):
    """prior=auto in the csv preset: multivariate t's for a table or windows, Student-t
    tails around a context's location and scale for p(window | past); a prior named on
    the command line is kept, and one a context model cannot take is refused in one line."""
    path = f"dataset.path={tmp_path / 'x.csv'}"
    plain, chosen = resolve_auto(_compose(["dataset=csv", path]), 500)
    assert plain.model.prior == chosen["model.prior"] == "mixture_t"
    given, _ = resolve_auto(_compose(["dataset=csv", path, "dataset.context=20"]), 500)
    assert given.model.prior == "student_t"
    named, chosen = resolve_auto(_compose(["dataset=csv", path, "model.prior=gaussian"]), 500)
    assert named.model.prior == "gaussian" and "model.prior" not in chosen
    rng = np.random.default_rng(0)
    prices = 100 * np.exp(np.cumsum(0.01 * rng.standard_normal(300)))
    csv = tmp_path / "p.csv"
    np.savetxt(csv, prices[:, None], delimiter=",", header="close", comments="", fmt="%.6f")
    cfg = _compose(
        [
            "dataset=csv",
            f"dataset.path={csv}",
            "dataset.columns=[close]",
            "dataset.transform=log_return",
            "dataset.context=5",
            "model.prior=mixture_t",
            f"run_dir={tmp_path / 'run'}",
            "device=cpu",
        ]
    )
    with pytest.raises(Exception, match="prior=mixture_t is for unconditional models"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_ckpt_auto_resumes_with_the_runs_own_auto_choices(tmp_path):
    """A run whose auto prior resolved to something else (another version's rule, here
    set on the first command line) resumes with the same command line and ckpt=auto:
    an auto setting takes the value the run chose."""
    from helpers import run_console

    from glow_train.cli import train_main

    rng = np.random.default_rng(0)
    np.savetxt(
        tmp_path / "t.csv", rng.standard_t(5, (200, 3)), delimiter=",", header="a,b,c", comments=""
    )
    command = [
        "dataset=csv",
        "dataset.path=t.csv",
        "run_dir=run",
        "ckpt=auto",
        "device=cpu",
        "train.progress=false",
        "train.early_stopping=null",
    ]
    first = [*command, "sizing.model.prior=student_t", "train.max_steps=4"]
    status, out, err = run_console(train_main, first, tmp_path)
    assert status == 0 and "model.prior=student_t" in out, err
    status, out, err = run_console(train_main, [*command, "train.max_steps=6"], tmp_path)
    assert status == 0 and "resuming" in out, err
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert state["step"] == 6 and state["model_config"]["prior"] == "student_t"


# --------------------------------------------------------------------- early stopping


def test_early_stopping_reports_the_model_chosen_on_validation(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_t(5, size=(400, 3)) @ np.array([[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1.0]])
    path = tmp_path / "t.csv"
    np.savetxt(path, x, delimiter=",", header="a,b,c", comments="", fmt="%.8g")
    cfg = _compose(
        [
            "dataset=csv",
            f"dataset.path={path}",
            f"run_dir={tmp_path / 'run'}",
            "train.progress=false",
            "train.early_stopping=2",
            "train.eval_every_steps=10",
            "train.lr=3e-2",  # high enough to stop improving quickly
            "train.max_steps=5000",
            "device=cpu",
        ]
    )
    result = train(cfg)
    assert result.stopped_early and result.step < 5000
    assert result.step == result.best_step + 2 * 10  # two evaluations without improvement
    out = capsys.readouterr().out
    assert "best.pt, the model chosen on validation" in out
    report = evaluate(result.best_ckpt, split="test", progress=False, out=str(tmp_path / "e.json"))
    assert report.result.value == pytest.approx(result.best_test_score, abs=1e-5)


# --------------------------------------------------------------------- known answers


def _fit_series(tmp_path, values, context, extra):
    path = tmp_path / "series.csv"
    _write_series(path, values)
    overrides = [
        "dataset=csv",
        f"dataset.path={path}",
        f"dataset.context={context}",
        f"run_dir={tmp_path / 'run'}",
        "train.progress=false",
        "device=cpu",
        *extra,
    ]
    result = train(_compose(overrides))
    table = load_table(_table_cfg(path, context=context))
    return result, table.parts["test"]


AR1_SMALL = [
    "model.K=2",
    "model.hidden_features=32",
    "model.dropout=0",
    "train.lr=1e-3",
    "precision=fp32",  # the same arithmetic on CPUs with and without native bf16
]


@pytest.mark.parametrize(
    "n, max_steps", [pytest.param(2000, 400), pytest.param(20000, 4000, marks=pytest.mark.slow)]
)
def test_ar1_conditional_density_is_the_exact_one_step_density(tmp_path, n, max_steps):
    phi, sigma = 0.7, 1.0
    values = ar1(n, phi, sigma, seed=0)
    result, test = _fit_series(
        tmp_path,
        values,
        2,
        AR1_SMALL + [f"train.max_steps={max_steps}", "train.eval_every_steps=25"],
    )
    exact = (
        0.5 * math.log(2 * math.pi * sigma**2)
        + 0.5 * ((test[:, -1] - phi * test[:, -2]) / sigma) ** 2
    )
    assert result.best_test_score == pytest.approx(float(exact.mean()), abs=0.02)


def garch_t(n: int, seed: int, omega=0.05, alpha=0.1, beta=0.85, df=6.0):
    """Returns of a GARCH(1,1) with unit-variance Student-t innovations, and the exact
    one-step log-density of each return given its full past (the filter)."""
    rng = np.random.default_rng(seed)
    scale_t = math.sqrt((df - 2) / df)
    eps = rng.standard_t(df, size=n + 500) * scale_t
    var = omega / (1 - alpha - beta)
    out, logp = np.empty(n + 500), np.empty(n + 500)
    const = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(math.pi * (df - 2))
    for t in range(n + 500):
        out[t] = math.sqrt(var) * eps[t]
        u = out[t] ** 2 / var
        logp[t] = const - 0.5 * math.log(var) - (df + 1) / 2 * math.log1p(u / (df - 2))
        var = omega + alpha * out[t] ** 2 + beta * var
    return out[500:], logp[500:]


@pytest.mark.parametrize(
    "n, context",
    [pytest.param(4000, 20, id="small"), pytest.param(20000, 40, marks=pytest.mark.slow)],
)
def test_garch_conditional_density_is_near_the_filtered_density(tmp_path, n, context):
    """The defaults (dataset=csv with a context, nothing else) on a GARCH(1,1)-t series:
    the test figure of p(next return | previous C) is within 0.05 nats of the exact
    density given the whole past, averaged over the same test returns."""
    values, logp = garch_t(n, seed=1)
    result, test = _fit_series(tmp_path, values, context, ["precision=fp32"])
    exact = -logp[-len(test) :].mean()
    assert result.best_test_score == pytest.approx(float(exact), abs=0.05)


def test_resuming_a_table_run_may_name_its_own_dataset(tmp_path):
    """A 1-D Glow's keys are unknown to the default (image) model's schema: a resume
    that sets one says to name the run's dataset, and with it the run continues (or a
    changed architecture is refused as such)."""
    from helpers import run_console

    from glow_train.cli import train_main

    path = tmp_path / "t.csv"
    np.savetxt(
        path,
        np.random.default_rng(0).normal(size=(200, 3)),
        delimiter=",",
        header="a,b,c",
        comments="",
    )
    common = ["train.progress=false", "device=cpu"]
    first = [
        "dataset=csv",
        f"dataset.path={path}",
        "train.max_steps=20",
        f"run_dir={tmp_path / 'r'}",
    ]
    assert run_console(train_main, [*first, *common], tmp_path)[0] == 0
    ckpt = f"ckpt={tmp_path / 'r' / 'last.pt'}"
    status, _, err = run_console(train_main, [ckpt, "model.prior=gaussian", *common], tmp_path)
    assert status == 2 and len(err.strip().splitlines()) == 1 and "dataset=csv" in err
    status, _, err = run_console(
        train_main,
        [ckpt, "dataset=csv", "model.prior=gaussian", "train.max_steps=30", *common],
        tmp_path,
    )
    assert status == 2 and "different configuration" in err
    status, out, err = run_console(
        train_main, [ckpt, "dataset=csv", "train.max_steps=30", *common], tmp_path
    )
    assert status == 0, err
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"] == 30
    status, _, err = run_console(train_main, [ckpt, "dataset=digits", *common], tmp_path)
    assert status == 2 and "cannot change dataset=digits when resuming" in err


def test_a_checkpoint_from_before_full_covariance_mixtures_evaluates_but_does_not_resume(
    tmp_path,
):
    """A model.prior=mixture checkpoint written before the mixture had off_diagonal (and
    used): its weights load (the density is the diagonal mixture it was), but the
    optimiser state has one parameter fewer, so resuming is refused in one line that
    says why."""
    from glow_train import load
    from glow_train.errors import CheckpointError

    rng = np.random.default_rng(0)
    path = tmp_path / "t.csv"
    np.savetxt(path, rng.standard_normal((120, 3)), delimiter=",", header="a,b,c", comments="")
    options = [
        "dataset=csv",
        f"dataset.path={path}",
        "device=cpu",
        "train.progress=false",
        "model.prior=mixture",
        "precision=fp32",
    ]
    train(_compose([*options, f"run_dir={tmp_path / 'run'}", "train.max_steps=3"]))
    last = tmp_path / "run" / "last.pt"
    state = torch.load(last, weights_only=False)
    for part in ("objective", "ema"):  # as the older version wrote it
        for key in [k for k in state[part] if k.endswith(("prior.off_diagonal", "prior.used"))]:
            del state[part][key]
    group = state["optimizer"]["param_groups"][0]
    state["optimizer"]["state"].pop(group["params"].pop(), None)
    torch.save(state, last)
    before = load(last).flow.prior.off_diagonal
    assert before.abs().max() == 0
    resumed = [*options, f"ckpt={last}", f"run_dir={tmp_path / 'again'}", "train.max_steps=5"]
    with pytest.raises(
        CheckpointError,
        match="written before this version's model had .*"
        "prior.off_diagonal.* training cannot resume from it; start a new run",
    ):
        train(_compose(resumed))
