#!/usr/bin/env python
"""Test nats/dim of the 1-D Glow's defaults against classical and flow baselines.

Every model is fitted on the same training split of each dataset, chosen on the same
validation split where it has a choice, and scored on the same test split (the splits
of ``glow-train dataset=csv``): lower is better, in the data's own units.

- ``glow1d``: ``glow-train dataset=csv dataset.path=<file>`` with no other option
  (series: plus the columns, window and transform that say what an item is); its
  figure is the one the run reports, best.pt's, chosen on validation.
- ``gaussian``: a full-covariance Gaussian fitted by maximum likelihood.
- ``gmm``: scikit-learn's GaussianMixture (full covariances), 1..8 components, the
  count chosen on validation.
- ``nsf``, ``maf``: zuko's neural spline flow and masked autoregressive flow
  (``pip install -e '.[bench]'``), on standardised data, Adam with early stopping on
  validation; skipped with a note when zuko is not installed.
- ``truth``: the exact density, for the simulated tables that have one.

The datasets: scikit-learn's breast-cancer (30 columns), wine (13) and diabetes (the
9 continuous columns; its binary column would give a density spike), a 6-D Student-t
(4 degrees of freedom) and a 4-D mixture of three correlated Gaussians written with
known densities, two simulated price series cut into windows of 8 log-returns (a
GARCH(1,1) with Student-t innovations and an AR(1) with Student-t innovations), and
the next GARCH return given the previous 20 (``garch_t_next``, ``dataset.context=20``).
On that one the Gaussian, the mixture and zuko's flows are conditional densities of
the same items, and two more rows join:

- ``garch_t``: a GARCH(1,1)-t fitted on the training returns with ``arch``
  (``pip install -e '.[finance]'``), its density of each test return given the whole
  past; skipped with a note when arch is not installed.
- ``truth``: the simulation's own filter, with the true parameters.

    python scripts/bench_tabular.py --out bench_tabular/     # every dataset
    python scripts/bench_tabular.py --only wine,student_t --json out.json

The fitting times are wall-clock seconds on this machine, comparable within one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from garch_fits import arch_filter, standardized_t_logpdf
from scipy import stats

from glow_train.data.table import load_table, series_values

SERIES = {"columns": ["close"], "window": 8, "transform": "log_return"}


# ------------------------------------------------------------------ datasets


def _write(path: Path, names: list[str], values: np.ndarray) -> Path:
    header = ",".join(names)
    np.savetxt(path, values, delimiter=",", header=header, comments="", fmt="%.10g")
    return path


def sklearn_table(name: str, folder: Path) -> tuple[Path, dict]:
    from sklearn import datasets

    data = {
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "diabetes": datasets.load_diabetes,
    }[name]()
    x, names = data.data, [str(n).replace(" ", "_") for n in data.feature_names]
    if name == "diabetes":  # the binary column 'sex' has no density
        keep = [i for i, n in enumerate(names) if n != "sex"]
        x, names = x[:, keep], [names[i] for i in keep]
    return _write(folder / f"{name}.csv", names, x), {}


def student_t_table(folder: Path, n: int = 2000, d: int = 6, df: float = 4.0, seed: int = 0):
    """Rows of a multivariate Student-t with a random correlation; its exact density."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + 0.5 * np.eye(d)
    dist = stats.multivariate_t(loc=rng.normal(size=d), shape=cov, df=df, seed=seed)
    x = dist.rvs(n)
    return _write(folder / "student_t.csv", [f"x{i}" for i in range(d)], x), {
        "log_prob": dist.logpdf
    }


def mixture_table(folder: Path, n: int = 2000, d: int = 4, seed: int = 1):
    """Rows of a mixture of three correlated Gaussians; its exact density."""
    rng = np.random.default_rng(seed)
    weights = np.array([0.5, 0.3, 0.2])
    comps = []
    for _ in weights:
        a = rng.normal(size=(d, d)) * 0.5
        comps.append(
            stats.multivariate_normal(rng.normal(scale=3.0, size=d), a @ a.T + 0.1 * np.eye(d))
        )
    which = rng.choice(len(weights), size=n, p=weights)
    x = np.stack([comps[k].rvs(random_state=rng) for k in which])

    def log_prob(v: np.ndarray) -> np.ndarray:
        parts = np.stack([np.log(w) + c.logpdf(v) for w, c in zip(weights, comps, strict=True)])
        return np.logaddexp.reduce(parts, axis=0)

    return _write(folder / "mixture.csv", [f"x{i}" for i in range(d)], x), {"log_prob": log_prob}


def garch_t_returns(n: int, seed: int, omega=2e-6, alpha=0.08, beta=0.9, df=5.0):
    """Returns of a GARCH(1,1) with unit-variance Student-t innovations, the exact
    log-density of each return given its whole past (the filter, known parameters),
    and each return's conditional standard deviation."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_t(df, size=n + 500) * math.sqrt((df - 2) / df)
    var, out = omega / (1 - alpha - beta), np.empty(n + 500)
    logp, sd = np.empty(n + 500), np.empty(n + 500)
    for t in range(n + 500):
        sd[t] = math.sqrt(var)
        out[t] = sd[t] * eps[t]
        logp[t] = standardized_t_logpdf(out[t] / sd[t], df) - math.log(sd[t])
        var = omega + alpha * out[t] ** 2 + beta * var
    return out[500:], logp[500:], sd[500:]


def ar1_t_returns(n: int, seed: int, phi=0.6, scale=0.01, df=4.0):
    rng = np.random.default_rng(seed)
    eps = rng.standard_t(df, size=n + 100) * scale
    out = np.zeros(n + 100)
    for t in range(1, n + 100):
        out[t] = phi * out[t - 1] + eps[t]
    return out[100:]


def price_series(name: str, folder: Path, n: int = 4000) -> tuple[Path, dict, dict]:
    """Prices from simulated log-returns: windows of 8 (``garch_t``, ``ar1_t``), or the
    next return given the previous ``NEXT_CONTEXT`` (``garch_t_next``, whose exact
    conditional density, the filter's, is known)."""
    extra = {}
    if name.startswith("garch_t"):
        returns, logp, _ = garch_t_returns(n, 2)
        extra["step_log_prob"] = logp
    else:
        returns = ar1_t_returns(n, 3)
    prices = 100.0 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))
    options = dict(NEXT) if name.endswith("_next") else dict(SERIES)
    return _write(folder / f"{name}.csv", ["close"], prices[:, None]), options, extra


NEXT_CONTEXT = 20
NEXT = {"columns": ["close"], "context": NEXT_CONTEXT, "transform": "log_return"}
DATASETS = (
    "breast_cancer",
    "wine",
    "diabetes",
    "student_t",
    "mixture",
    "garch_t",
    "ar1_t",
    "garch_t_next",
)


def make_dataset(name: str, folder: Path) -> tuple[Path, dict, dict]:
    """``(csv path, dataset.* options, extras)``: extras may hold the exact ``log_prob``."""
    if name in ("breast_cancer", "wine", "diabetes"):
        path, _ = sklearn_table(name, folder)
        return path, {}, {}
    if name == "student_t":
        path, extra = student_t_table(folder)
        return path, {}, extra
    if name == "mixture":
        path, extra = mixture_table(folder)
        return path, {}, extra
    return price_series(name, folder)


# ------------------------------------------------------------------ models


def glow1d_config(path: Path, options: dict, run_dir: Path, extra: tuple = ()):
    """The config of ``glow-train dataset=csv dataset.path=<file>`` (+ the series
    options, + ``extra`` command-line overrides), composed by Hydra."""
    from hydra import compose, initialize_config_module

    overrides = ["dataset=csv", f"dataset.path={path}", f"run_dir={run_dir}"]
    overrides += ["train.progress=false", "device=cpu"]
    for key, value in options.items():
        text = "[" + ",".join(value) + "]" if isinstance(value, list) else value
        overrides.append(f"dataset.{key}={text}")
    overrides += list(extra)
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        return compose("train", overrides)


def glow1d_defaults(path: Path, options: dict, run_dir: Path, extra: tuple = ()) -> dict:
    """Trains the 1-D Glow of :func:`glow1d_config`: its test figure (best.pt's), the
    seconds it took, the step and path of best.pt."""
    from glow_train.training import train

    cfg = glow1d_config(path, options, run_dir, extra)
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    return {
        "nats": result.best_test_score,
        "seconds": seconds,
        "step": result.best_step,
        "ckpt": str(result.best_ckpt),
    }


def standardized(parts: dict, context: int = 0) -> tuple[dict, float]:
    """The splits standardised with the training statistics, and the log-Jacobian per
    item of the modelled values (those after the first ``context``), so that figures on
    them convert back to the data's own units."""
    loc, scale = parts["train"].mean(0), parts["train"].std(0)
    return {k: (v - loc) / scale for k, v in parts.items()}, float(-np.log(scale[context:]).sum())


def gaussian(parts: dict, context: int = 0) -> dict:
    """Full covariance; with a context, the conditional Gaussian of the rest given it
    (the joint's log-density minus the context's)."""
    start = time.perf_counter()
    data, log_jac = standardized(parts, context)
    train, test = data["train"], data["test"]
    mean, cov = train.mean(0), np.cov(train, rowvar=False, bias=True)
    logp = stats.multivariate_normal(mean, cov).logpdf(test)
    if context:
        c = slice(0, context)
        logp = logp - stats.multivariate_normal(mean[c], cov[c, c]).logpdf(test[:, c])
    nats = -(logp.mean() + log_jac) / (train.shape[1] - context)
    return {"nats": float(nats), "seconds": time.perf_counter() - start}


def _gmm_log_prob(model, x: np.ndarray, context: int) -> np.ndarray:
    """log p(x) of a fitted GaussianMixture, or log p(rest | first ``context``)."""
    logp = model.score_samples(x)
    if not context:
        return logp
    c = slice(0, context)
    parts = [
        np.log(w) + stats.multivariate_normal(m[c], cov[c, c]).logpdf(x[:, c])
        for w, m, cov in zip(model.weights_, model.means_, model.covariances_, strict=True)
    ]
    return logp - np.logaddexp.reduce(np.stack(parts).reshape(len(parts), -1), axis=0)


def gmm(parts: dict, context: int = 0, max_components: int = 8) -> dict:
    from sklearn.mixture import GaussianMixture

    start = time.perf_counter()
    data, log_jac = standardized(parts, context)
    best = None
    for k in range(1, max_components + 1):
        model = GaussianMixture(k, covariance_type="full", n_init=2, random_state=0)
        model.fit(data["train"])
        val = -_gmm_log_prob(model, data["val"], context).mean()
        if best is None or val < best[0]:
            best = (val, k, model)
    _, k, model = best
    dims = data["train"].shape[1] - context
    nats = -(_gmm_log_prob(model, data["test"], context).mean() + log_jac) / dims
    return {"nats": float(nats), "seconds": time.perf_counter() - start, "components": k}


def zuko_flow(
    parts: dict, kind: str, context: int = 0, patience: int = 20, max_epochs: int = 1000
) -> dict:
    """zuko's NSF or MAF on standardised data (with a context: conditioned on it),
    early stopping on validation."""
    import zuko

    start = time.perf_counter()
    torch.manual_seed(0)
    arrays, log_jac = standardized(parts, context)
    data = {k: torch.from_numpy(v).float() for k, v in arrays.items()}
    d = data["train"].shape[1] - context
    make = zuko.flows.NSF if kind == "nsf" else zuko.flows.MAF
    flow = make(features=d, context=context, transforms=4, hidden_features=[128, 128])
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    batch = min(256, max(32, len(data["train"]) // 8))

    def log_prob(x: torch.Tensor) -> torch.Tensor:
        dist = flow(x[:, :context]) if context else flow()
        return dist.log_prob(x[:, context:])

    def nll(x: torch.Tensor) -> float:
        with torch.no_grad():
            return float(-(log_prob(x).mean()) - log_jac) / d

    best, best_state, since = math.inf, None, 0
    for _ in range(max_epochs):
        order = torch.randperm(len(data["train"]))
        for i in range(0, len(order) - batch + 1, batch):
            loss = -log_prob(data["train"][order[i : i + batch]]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        val = nll(data["val"])
        if val < best:
            best, best_state, since = val, copy.deepcopy(flow.state_dict()), 0
        else:
            since += 1
            if since >= patience:
                break
    flow.load_state_dict(best_state)
    return {"nats": nll(data["test"]), "seconds": time.perf_counter() - start}


def garch(returns: np.ndarray, n_train: int, n_test: int) -> dict | None:
    """GARCH(1,1) with Student-t innovations and a constant mean (the ``arch`` package,
    ``pip install -e '.[finance]'``), fitted on the first ``n_train`` returns, then run
    through the whole series with those parameters: the log-density of each of the last
    ``n_test`` returns given its whole past. ``None`` when arch is not installed."""
    fitted = arch_filter(returns, n_train, "garch_t")
    if fitted is None:
        return None
    return {"nats": float(-fitted["logp"][-n_test:].mean()), "seconds": fitted["seconds"]}


# ------------------------------------------------------------------ the table


def run(
    names: list[str], out: Path, glow_options: tuple = (), baselines: bool = True
) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    try:
        import zuko  # noqa: F401

        flows = ("nsf", "maf")
    except ImportError:
        print("zuko is not installed (pip install -e '.[bench]'): no nsf/maf rows")
        flows = ()
    rows = []
    for name in names:
        path, options, extra = make_dataset(name, out)
        cfg = {
            "path": str(path),
            "columns": None,
            "header": "auto",
            "delimiter": ",",
            "dropna": False,
            "window": None,
            "context": None,
            "stride": 1,
            "transform": "none",
            "val_size": 0.1,
            "test_size": 0.2,
            "split_seed": 0,
            **options,
        }
        table = load_table(cfg)
        parts = table.parts
        context = int(options.get("context") or 0)
        row = {
            "dataset": name,
            "dims": parts["train"].shape[1] - context,
            "context": context,
            "train": len(parts["train"]),
            "val": len(parts["val"]),
            "test": len(parts["test"]),
        }
        if "log_prob" in extra:
            row["truth"] = float(-extra["log_prob"](parts["test"]).mean() / row["dims"])
        if "step_log_prob" in extra and context:
            # the next return given its whole past; the test targets are the last returns
            row["truth"] = float(-extra["step_log_prob"][-row["test"] :].mean())
        row["gaussian"] = gaussian(parts, context)
        row["gmm"] = gmm(parts, context)
        for kind in flows if baselines else ():
            row[kind] = zuko_flow(parts, kind, context)
        if context:
            returns = series_values(cfg)[1][:, 0]
            fitted = garch(returns, len(returns) - row["test"] - row["val"], row["test"])
            if fitted is None:
                print("arch is not installed (pip install -e '.[finance]'): no garch_t row")
            else:
                row["garch_t"] = fitted
        row["glow1d"] = glow1d_defaults(path, options, out / "runs" / name, glow_options)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


COLUMNS = ("gaussian", "gmm", "nsf", "maf", "garch_t", "glow1d")


def format_row(row: dict) -> str:
    name = row["dataset"] + (f" (given {row['context']})" if row.get("context") else "")
    cells = [name, str(row["dims"]), str(row["train"])]
    cells.append(f"{row['truth']:.3f}" if "truth" in row else "")
    for key in COLUMNS:
        r = row.get(key)
        cells.append("" if r is None else f"{r['nats']:.3f} ({r['seconds']:.0f} s)")
    classical = min(row["gaussian"]["nats"], row["gmm"]["nats"])
    cells.append(f"{classical - row['glow1d']['nats']:+.3f}")
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| dataset | D | train | truth | gaussian | gmm (val) | zuko nsf | zuko maf | GARCH(1,1)-t "
    "| 1-D Glow (defaults) | margin over gaussian and gmm |\n|" + " --- |" * 11
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_tabular"))
    parser.add_argument("--only", default=None, help="comma-separated dataset names")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--glow",
        nargs="*",
        default=[],
        help="extra glow-train overrides for the 1-D Glow (default: none, its defaults)",
    )
    parser.add_argument("--no-flows", action="store_true", help="skip zuko's flows")
    args = parser.parse_args()
    names = DATASETS if args.only is None else args.only.split(",")
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        parser.error(f"--only: unknown dataset {unknown[0]!r}; choose from {', '.join(DATASETS)}")
    print(HEADER)
    if args.glow:
        print(f"1-D Glow with: {' '.join(args.glow)}")
    rows = run(list(names), args.out, tuple(args.glow), baselines=not args.no_flows)
    print("\n" + HEADER)
    for row in rows:
        print(format_row(row))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
