"""The 1-D Glow on tables and time series: dataset=csv, model=glow1d, the standardisation
inside the density, CSV samples, and two known answers (AR(1) windows, a real table)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from helpers import brute_force_logdet, perturb, run_console
from test_architecture import StandardNormal
from test_train import compose_train

from glow_train import Glow1D
from glow_train.cli import eval_main, sample_main, train_main
from glow_train.data import build_dataset, dataset_config, describe_dataset, load_table
from glow_train.errors import ConfigError, DataError
from glow_train.evaluation.figures import evaluate
from glow_train.flows import Standardize
from glow_train.likelihood.dequantize import Identity
from glow_train.likelihood.objective import Objective
from glow_train.training import train

SHORT = [
    "model=glow1d",
    "model.K=2",
    "model.hidden_features=16",
    "train.time_limit=null",
    "train.warmup_steps=5",
    "train.eval_every_steps=null",
    "train.sample_every=null",
    "train.num_samples=8",
    "train.progress=false",
    "dataset.batch_size=32",
]


def write_csv(path, header, rows):
    with open(path, "w") as f:
        if header is not None:
            f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join(str(v) for v in row) + "\n")
    return path


def table_cfg(path, **overrides):
    return dataset_config("csv", path=str(path), **overrides)


def gaussian_rows(n=400, seed=0):
    rng = np.random.default_rng(seed)
    cov = [[1.0, 0.5, 0.2], [0.5, 2.0, 0.3], [0.2, 0.3, 0.5]]
    return rng.multivariate_normal([1.0, -2.0, 30.0], cov, size=n)


# ------------------------------------------------------------------------ reading


def test_numeric_columns_header_and_names(tmp_path):
    rows = [[f"{a:.5f}", f"{b:.5f}", "x", f"{c:.5f}"] for a, b, c in gaussian_rows(50)]
    path = write_csv(tmp_path / "t.csv", ["a", "b", "tag", "c"], rows)
    spec = describe_dataset(table_cfg(path))
    assert spec.kind == "vector" and spec.shape == (3,) and spec.columns == ("a", "b", "c")
    assert spec.n_bits is None and spec.transform is None
    train = build_dataset(table_cfg(path), "train")
    x, label = train[0]
    assert x.dtype == torch.float32 and x.shape == (3,) and label == -1
    # the statistics are the training split's own
    values = load_table(table_cfg(path)).parts["train"]
    np.testing.assert_allclose(spec.loc, values.mean(0))
    np.testing.assert_allclose(spec.scale, values.std(0))
    # no header: columns are named by position
    plain = write_csv(tmp_path / "p.csv", None, [r[:2] for r in rows])
    assert describe_dataset(table_cfg(plain)).columns == ("0", "1")
    chosen = describe_dataset(table_cfg(path, columns=["c", "a"]))
    assert chosen.columns == ("c", "a")


def test_rows_split_is_seeded_disjoint_and_complete(tmp_path):
    rows = [[i, i * i % 7] for i in range(100)]
    path = write_csv(tmp_path / "t.csv", ["i", "j"], rows)
    parts = load_table(table_cfg(path)).parts
    ids = {k: set(v[:, 0].astype(int)) for k, v in parts.items()}
    assert [len(ids[k]) for k in ("train", "val", "test")] == [70, 10, 20]
    assert set.union(*ids.values()) == set(range(100))
    assert not (ids["train"] & ids["test"] or ids["train"] & ids["val"] or ids["val"] & ids["test"])
    again = load_table(table_cfg(path, val_size=10, test_size=20.0)).parts
    assert set(again["test"][:, 0].astype(int)) == ids["test"]  # counts = the same fractions
    other = load_table(table_cfg(path, split_seed=1)).parts
    assert set(other["test"][:, 0].astype(int)) != ids["test"]


def test_windows_are_split_by_time_without_leakage(tmp_path):
    # time plus a fraction of noise (a ramp alone has no density: its windows are
    # linearly dependent), so that the integer part tells each value's step
    rng = np.random.default_rng(0)
    t = np.arange(200) + rng.uniform(0, 0.5, 200)
    u = 1000 + np.arange(200) + rng.uniform(0, 0.5, 200)
    path = write_csv(tmp_path / "s.csv", ["t", "u"], np.stack([t, u], 1).tolist())
    cfg = table_cfg(path, window=5, stride=2)
    table = load_table(cfg)
    assert table.spec.shape == (10,) and table.spec.columns[:4] == ("t[0]", "u[0]", "t[1]", "u[1]")
    spans = {}
    for split, windows in table.parts.items():
        steps = np.floor(windows[:, 0::2])  # the t column of each window, time-major
        assert (np.diff(steps, axis=1) == 1).all()  # consecutive values
        assert (np.floor(windows[:, 1::2]) == steps + 1000).all()  # columns stay aligned
        assert (np.diff(steps[:, 0]) == 2).all()  # every stride steps
        spans[split] = (steps.min(), steps.max())
    # train = the first 140 values, validation the next 20, test the last 40
    assert spans["train"][1] < 140 <= spans["val"][0] and spans["val"][1] < 160 <= spans["test"][0]
    assert spans["test"][1] >= 198  # the last full window at stride 2


def test_log_returns(tmp_path):
    prices = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, 300)))
    path = write_csv(
        tmp_path / "p.csv", ["date", "close"], [[f"d{i}", p] for i, p in enumerate(prices)]
    )
    table = load_table(table_cfg(path, window=4, transform="log_return", columns=["close"]))
    returns = np.diff(np.log(prices))
    np.testing.assert_allclose(table.parts["train"][0], returns[:4])
    assert table.spec.transform == "log_return" and table.spec.series == ("close",)


@pytest.mark.parametrize(
    "rows,overrides,error,match",
    [
        (
            [["1", "a"], ["2", "b"]],
            {"columns": ["x", "y"]},
            DataError,
            "column 'y' is not numeric \\(line 2: 'a'\\)",
        ),
        (
            [["1", "2"], ["", "3"], ["4", "NA"], ["5", "6"]],
            {},
            DataError,
            "2 missing values in column 'x' \\(1: line 3\\); 'y' \\(1: line 4\\); "
            "set dataset.dropna=true",
        ),
        (
            [["1", "5"], ["2", "5"], ["3", "5"], ["4", "5"], ["6", "5"]],
            {"test_size": 1, "val_size": 0},
            DataError,
            "column\\(s\\) 'y' are constant on the training split",
        ),
        (
            [["1", "3"], ["2", "5"], ["4", "9"], ["7", "15"], ["8", "17"]],
            {"test_size": 1, "val_size": 0},
            DataError,
            "columns 'x', 'y' are linearly dependent on the training split .* leave one of "
            "them out of dataset.columns",
        ),
        (
            [[str(1e9 + v), str(v * v)] for v in (0.1, 0.7, 0.2, 0.9, 0.4, 0.5)],
            {"test_size": 1, "val_size": 0},
            DataError,
            "column 'x' varies by .* around 1e\\+09, finer than float32 resolves there; "
            "subtract an offset",
        ),
        (
            [[str(v), str(2 * v)] for v in (1.5, 0.2, 3.1, 0.7, 2.2, 1.1, 0.4, 2.9, 1.8, 0.3)],
            {"window": 2, "test_size": 2, "val_size": 0},
            DataError,
            "the windows of columns 'x', 'y' are linearly dependent on the training split",
        ),
        (
            [[str(v), "1"] for v in range(12)],
            {"window": 3, "columns": ["x"], "test_size": 3, "val_size": 0},
            DataError,
            "the windows of 'x' are linearly dependent .* exact linear recurrence",
        ),
        ([["1", "2"]], {"columns": ["x", "x"]}, ConfigError, "names 'x' twice"),
        (
            [["1", "2"], ["3", "4"]],
            {"window": 3},
            DataError,
            "dataset.window=3 is longer than the series .* \\(2 values\\)",
        ),
        (
            [["1", "2"], ["3", "4"], ["5", "7"]],
            {"test_size": 0.1},
            DataError,
            "3 rows split into 0 test, .* at least 1 test row and 2 training rows: set "
            "dataset.test_size/val_size to counts",
        ),
        (
            [["1", "2"], ["-1", "4"], ["5", "7"]],
            {"window": 2, "transform": "log_return"},
            DataError,
            "column 'x' has a value <= 0",
        ),
        ([["1", "2"]], {"columns": ["z"]}, ConfigError, "no column 'z' in .*; it has x, y"),
        (
            [["1", "2"]],
            {"transform": "log_return"},
            ConfigError,
            "needs a time series: set dataset.window",
        ),
        ([["1", "2"], ["3"]], {}, DataError, "line 3 has 1 fields, the header 2"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, rows, overrides, error, match):
    path = write_csv(tmp_path / "bad.csv", ["x", "y"], rows)
    with pytest.raises(error, match=match):
        describe_dataset(table_cfg(path, **overrides))


def test_dropna_drops_the_rows(tmp_path):
    rows = [[i, i % 3 if i % 10 else ""] for i in range(60)]
    path = write_csv(tmp_path / "t.csv", ["x", "y"], rows)
    table = load_table(table_cfg(path, dropna=True))
    assert sum(len(v) for v in table.parts.values()) == 54


def test_bad_input_from_the_command_line(tmp_path):
    path = write_csv(tmp_path / "bad.csv", ["x", "y"], [["1", "a"], ["2", "b"], ["3", "c"]])
    status, out, err = run_console(
        train_main,
        ["dataset=csv", f"dataset.path={path}", "dataset.columns=[x,y]", *SHORT],
        tmp_path,
    )
    assert status != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "column 'y' is not numeric" in lines[0]
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------ layers and density


def test_standardize_logdet_and_round_trip():
    layer = Standardize([1.0, -2.0, 30.0], [0.5, 2.0, 4.0])
    x = torch.randn(4, 3, dtype=torch.float64)
    z, logdet = layer(x)
    torch.testing.assert_close(logdet, brute_force_logdet(lambda v: layer(v)[0], x))
    torch.testing.assert_close(layer.inverse(z), x)
    with pytest.raises(ValueError, match="scale must be > 0"):
        Standardize([0.0], [0.0])


@pytest.mark.parametrize("activation,layers", [("relu", 2), ("tanh", 3), ("gelu", 1), ("elu", 2)])
def test_glow1d_options_logdet_and_round_trip(activation, layers):
    torch.manual_seed(0)
    model = Glow1D(
        5,
        K=3,
        hidden_features=12,
        coupling="affine",
        lu=True,
        hidden_layers=layers,
        activation=activation,
        dropout=0.3,
    )
    model = perturb(model.double(), 0.2).eval()  # dropout only in training mode
    x = torch.randn(4, 5, dtype=torch.float64)
    z, logdet = model.encode(x)
    torch.testing.assert_close(logdet, brute_force_logdet(lambda v: model.encode(v)[0], x))
    torch.testing.assert_close(model.decode(z), x)


def test_glow1d_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        Glow1D(4, 2, 8, "affine", True, activation="swish")
    with pytest.raises(ValueError, match="dropout must be in"):
        Glow1D(4, 2, 8, "affine", True, dropout=1.0)


def test_standardisation_is_part_of_the_likelihood():
    """A standard normal after standardisation is N(loc, diag(scale^2)) in data units."""
    loc, scale = torch.tensor([1.0, -2.0, 30.0]), torch.tensor([0.5, 2.0, 4.0])
    objective = Objective(StandardNormal(3), Identity(), Standardize(loc, scale))
    x = torch.randn(6, 3, dtype=torch.float64) * scale + loc
    nll = objective(objective.prepare(x), None)
    exact = -torch.distributions.Normal(loc.double(), scale.double()).log_prob(x).sum(1)
    torch.testing.assert_close(nll.double(), exact)
    assert objective.metric == "nats_per_dim"
    torch.testing.assert_close(objective.score(nll), exact / 3)


# ------------------------------------------------------------------------ end to end


def test_csv_end_to_end_train_resume_eval_sample(tmp_path):
    path = write_csv(tmp_path / "g.csv", ["a", "b", "c"], gaussian_rows().tolist())
    run = tmp_path / "run"
    args = ["dataset=csv", f"dataset.path={path}", *SHORT, f"run_dir={run}"]
    status, out, err = run_console(train_main, [*args, "train.max_steps=20"], tmp_path)
    assert status == 0, err
    assert "test items" in out and (run / "samples.csv").read_text().startswith("a,b,c\n")
    status, out, err = run_console(
        train_main, ["train.max_steps=30", f"ckpt={run / 'last.pt'}"], tmp_path
    )
    assert status == 0 and "resuming" in out, err
    status, out, err = run_console(
        eval_main, [f"ckpt={run / 'last.pt'}", "progress=false"], tmp_path
    )
    assert status == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("test nll: ") and last.endswith(" nats/dim")
    summary = json.loads((run / "eval" / "last_csv_test" / "eval.json").read_text())
    assert summary["unit"] == "nats/dim" and f"{summary['nll']:.4f}" in last
    assert math.isfinite(summary["nll"]) and summary["num_items"] == 80
    # the standard error over the items, from the per-item figures the library returns
    report = evaluate(run / "last.pt", out=tmp_path / "again.json", progress=False)
    per_item = report.result.per_item.numpy()
    assert report.summary["nll"] == summary["nll"] and len(per_item) == 80
    assert summary["stderr_items"] == pytest.approx(per_item.std(ddof=1) / math.sqrt(80))
    assert f"standard error over 80 items: {summary['stderr_items']:.2g}" in out
    status, out, err = run_console(
        sample_main, [f"ckpt={run / 'last.pt'}", "n=5", f"out={tmp_path / 's.csv'}"], tmp_path
    )
    assert status == 0, err
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "a,b,c" and len(lines) == 6
    values = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    assert abs(values[:, 2].mean() - 30) < 5  # in the data's own units, not standardised
    # an image grid's layout means nothing for CSV rows: refused, nothing written
    for option in ("nrow=2", "padding=0"):
        target = tmp_path / f"grid_{option[:4]}.csv"
        status, out, err = run_console(
            sample_main, [f"ckpt={run / 'last.pt'}", "n=5", option, f"out={target}"], tmp_path
        )
        line = err.strip().splitlines()[-1]
        assert status != 0 and option in line and "CSV rows" in line and not target.exists()


def test_log_return_windows_end_to_end(tmp_path):
    prices = 50 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, 600)))
    path = write_csv(
        tmp_path / "p.csv", ["date", "close"], [[f"d{i}", p] for i, p in enumerate(prices)]
    )
    run = tmp_path / "run"
    args = [
        "dataset=csv",
        f"dataset.path={path}",
        "dataset.window=4",
        "dataset.transform=log_return",
    ]
    status, out, err = run_console(
        train_main, [*args, *SHORT, "train.max_steps=10", f"run_dir={run}"], tmp_path
    )
    assert status == 0, err
    assert "log-returns of close in windows of 4" in out
    status, out, _ = run_console(eval_main, [f"ckpt={run}", "progress=false"], tmp_path)
    assert out.strip().endswith("nats/dim (density of the log-returns of close in windows of 4)")
    status, out, err = run_console(
        sample_main, [f"ckpt={run}", "n=3", "start_price=50", f"out={tmp_path / 'w.csv'}"], tmp_path
    )
    assert status == 0, err
    returns = (tmp_path / "w.csv").read_text().splitlines()
    prices_out = (tmp_path / "w_prices.csv").read_text().splitlines()
    assert returns[0] == "close[0],close[1],close[2],close[3]"
    assert prices_out[0].split(",")[0] == "close[0]" and len(prices_out[0].split(",")) == 5
    for r, p in zip(returns[1:], prices_out[1:], strict=True):
        r, p = np.array(r.split(","), float), np.array(p.split(","), float)
        np.testing.assert_allclose(p, 50 * np.exp(np.concatenate([[0], np.cumsum(r)])))
    status, _, err = run_console(sample_main, [f"ckpt={run}", "out=x.png"], tmp_path)
    assert status != 0 and "samples of a vector model are CSV" in err


# ------------------------------------------------------------------------ known answers


def ar1_windows_nll(windows: np.ndarray, phi: float, sigma: float) -> float:
    """Exact mean NLL per dimension of stationary Gaussian AR(1) windows."""
    w = windows.shape[1]
    var = sigma**2 / (1 - phi**2)
    cov = var * phi ** np.abs(np.subtract.outer(np.arange(w), np.arange(w)))
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, windows.T)
    nll = 0.5 * (z**2).sum(0) + np.log(np.diag(chol)).sum() + 0.5 * w * math.log(2 * math.pi)
    return float(nll.mean() / w)


def test_ar1_windows_reach_the_exact_density(tmp_path):
    phi, sigma, n = 0.8, 0.5, 12000
    rng = np.random.default_rng(0)
    x = np.empty(n)
    x[0] = rng.normal(0, sigma / math.sqrt(1 - phi**2))
    for t in range(1, n):
        x[t] = phi * x[t - 1] + sigma * rng.normal()
    path = write_csv(tmp_path / "ar1.csv", ["x"], [[f"{v:.8f}"] for v in x])
    cfg = compose_train(
        "dataset=csv",
        f"dataset.path={path}",
        "dataset.window=4",
        "dataset.stride=2",
        "model=glow1d",
        "model.K=4",
        "model.hidden_features=32",
        "dataset.batch_size=256",
        "train.max_steps=600",
        "train.lr=2e-3",
        "train.time_limit=null",
        "train.progress=false",
        "train.eval_every_steps=null",
        "train.sample_every=null",
        f"run_dir={tmp_path / 'run'}",
    )
    result = train(cfg)
    exact = ar1_windows_nll(load_table(cfg.dataset).parts["test"], phi, sigma)
    assert abs(result.last_test_score - exact) < 0.05, (result.last_test_score, exact)


def test_real_table_beats_a_full_covariance_gaussian(tmp_path):
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_breast_cancer().data  # 569 rows x 30 skewed columns
    path = write_csv(tmp_path / "bc.csv", [f"f{i}" for i in range(30)], data.tolist())
    cfg = compose_train(
        "experiment=tabular",
        f"dataset.path={path}",
        "dataset.val_size=0.15",
        "train.progress=false",
        f"run_dir={tmp_path / 'run'}",
    )
    result = train(cfg)
    parts = load_table(cfg.dataset).parts
    train_x, test_x = parts["train"], parts["test"]
    mean, cov = train_x.mean(0), np.cov(train_x.T, bias=True)
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (test_x - mean).T)
    gaussian = (
        0.5 * (z**2).sum(0) + np.log(np.diag(chol)).sum() + 15 * math.log(2 * math.pi)
    ).mean() / 30
    assert result.last_test_score < gaussian - 0.2, (result.last_test_score, gaussian)


def test_repeated_whole_numbers_are_warned_of(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        [int(a), float(b)] for a, b in zip(rng.integers(0, 3, 60), rng.normal(size=60), strict=True)
    ]
    path = write_csv(tmp_path / "t.csv", ["level", "x"], rows)
    with pytest.warns(UserWarning, match="column\\(s\\) 'level' hold whole numbers that repeat"):
        load_table(table_cfg(path))
    spread = write_csv(tmp_path / "u.csv", ["x", "y"], rng.normal(size=(60, 2)).tolist())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_table(table_cfg(spread))
