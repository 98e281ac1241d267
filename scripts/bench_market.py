#!/usr/bin/env python
"""The 1-D Glow on daily markets against the models a finance user fits with `arch`.

Each series is a CSV of daily prices modelled as a finance user would:
`glow-train dataset=csv dataset.path=<csv> dataset.columns=[<col>]
dataset.transform=log_return dataset.context=20` and nothing else. Every method is
scored on the test part of that command's own split (the last 20 % of the
log-returns, cut by `glow_train.data`, so every row sees the same test returns):

- `iid_t`: a Student-t fitted by maximum likelihood to the returns before the test part;
- `garch_t`, `gjr_garch_t`, `egarch_t`: GARCH(1,1), GJR-GARCH(1,1) and EGARCH(1,1)
  (with its asymmetric term) with Student-t innovations, fitted with `arch` on the
  returns before the test part and filtered through it with those parameters;
- `historical`: historical simulation over the last 500 days (risk rows only);
- `glow1d`: the command above, best.pt scored by the library behind `glow-eval` (its
  density) and `glow-eval backtest=var` (its risk rows);
- `truth`: the simulated series' own conditional density, VaR and ES.

Per method: test nats/return (the negative log-density per return, lower is better)
with its standard error over the test returns, the paired difference from
GJR-GARCH(1,1)-t with its standard error, VaR exceedances at 1 % and 5 % with the
Kupiec and Christoffersen p-values, Acerbi and Székely's Z2 test of the expected
shortfall with its p-value (`glow_train.series.risk`), and the fitting seconds.

The series: `wti` (WTI crude oil daily prices shipped with `arch`, missing days
dropped) and `gjr_skewt` (a simulated GJR-GARCH(1,1) with Hansen's skewed-t
innovations, `market_series.GJR_SKEWT`); `--csv PATH --column NAME` adds any other
CSV of prices (a held-back series runs with the same command).

    python scripts/bench_market.py --out bench_market/
    python scripts/bench_market.py --series wti --no-glow
    python scripts/bench_market.py --csv prices.csv --column close --json out.json

Needs the `finance` extra (`pip install -e '.[finance]'`). The seconds are wall-clock
on this machine, comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from bench_tabular import glow1d_config, glow1d_defaults
from garch_fits import arch_filter
from market_series import (
    GJR_SKEWT,
    gjr_skewt_returns,
    skewt_ppf,
    skewt_tail_mean,
    write_prices,
)
from omegaconf import OmegaConf
from scipy import stats

from glow_train.data.table import load_table, series_values
from glow_train.series.risk import (
    LEVELS,
    coverage,
    empirical_quantile,
    student_t_quantile,
    student_t_var_es,
    var_es,
)
from glow_train.training.run_dir import new_run_dir

SERIES = ("wti", "gjr_skewt")
CONTEXT = 20
HISTORY = 500  # days of historical simulation
ARCH_MODELS = ("garch_t", "gjr_garch_t", "egarch_t")
LABELS = {
    "truth": "truth (the simulation's density)",
    "iid_t": "i.i.d. Student-t",
    "garch_t": "GARCH(1,1)-t",
    "gjr_garch_t": "GJR-GARCH(1,1)-t",
    "egarch_t": "EGARCH(1,1)-t",
    "historical": f"historical simulation ({HISTORY} days)",
    "glow1d": "1-D Glow (defaults, context 20)",
}
REFERENCE = "gjr_garch_t"  # the paired differences are against it


# ------------------------------------------------------------------ the series


def make_series(name: str, folder: Path, length: int, seed: int) -> tuple[Path, str, dict | None]:
    """`(csv of prices, column, truth)`; `truth` holds the simulation's `returns`, `mean`,
    `sd` and `logp` (each return's true log-density given its past), else `None`."""
    if name == "wti":
        from market_series import wti_prices

        return write_prices(folder / "wti.csv", wti_prices()), "price", None
    if name == "gjr_skewt":
        truth = gjr_skewt_returns(length, seed)
        prices = 100.0 * np.exp(np.concatenate([[0.0], np.cumsum(truth["returns"])]))
        return write_prices(folder / "gjr_skewt.csv", prices), "price", truth
    raise ValueError(f"unknown series {name!r}; choose from {', '.join(SERIES)}")


def split(data_cfg: dict) -> tuple[np.ndarray, int]:
    """The whole return series of `glow-train`'s dataset config and the index of its
    first test return: the test items' targets are `returns[first_test:]`."""
    returns = series_values(data_cfg)[1][:, 0]
    targets = load_table(data_cfg).parts["test"][:, -1]  # each test item's last value
    first_test = len(returns) - len(targets)
    if not np.array_equal(returns[first_test:], targets):
        raise RuntimeError("the test items' targets are not the last returns of the series")
    return returns, first_test


# ------------------------------------------------------------------ the methods


def risk_rows(returns: np.ndarray, forecast, quantile) -> list[dict]:
    """The backtest rows at each level of `LEVELS`; `forecast(level) -> (var, es)`."""
    return [coverage(returns, *forecast(a), a, quantile) for a in LEVELS]


def t_method(test: np.ndarray, mean, sd, nu: float, logp, seconds: float) -> dict:
    """A method whose forecasts are location-scale Student-t's (unit-variance `sd`)."""
    return {
        "logp": logp,
        "risk": risk_rows(
            test,
            lambda a: student_t_var_es(mean, sd, nu, a),
            student_t_quantile(mean, sd, nu),
        ),
        "seconds": seconds,
    }


def iid_t(returns: np.ndarray, first_test: int) -> dict:
    start = time.perf_counter()
    nu, loc, scale = stats.t.fit(returns[:first_test])
    seconds = time.perf_counter() - start
    test = returns[first_test:]
    n = len(test)
    sd = np.full(n, scale * math.sqrt(nu / (nu - 2)))  # the unit-variance scale (nu > 2)
    logp = stats.t.logpdf(test, nu, loc, scale)
    return t_method(test, np.full(n, loc), sd, nu, logp, seconds)


def arch_method(returns: np.ndarray, first_test: int, kind: str) -> dict | None:
    fitted = arch_filter(returns, first_test, kind)
    if fitted is None:
        return None
    test, keep = returns[first_test:], slice(first_test, None)
    mean, sd = fitted["mean"][keep], fitted["sd"][keep]
    method = t_method(test, mean, sd, fitted["nu"], fitted["logp"][keep], fitted["seconds"])
    method["params"] = fitted["params"]
    return method


def historical(returns: np.ndarray, first_test: int) -> dict:
    """VaR and ES from the `HISTORY` returns before each test step (all of them before
    the test part when there are fewer)."""
    start = time.perf_counter()
    days = min(HISTORY, first_test)
    windows = np.lib.stride_tricks.sliding_window_view(returns[:-1], days)
    windows = windows[first_test - days :]  # windows[i] ends just before first_test + i
    risk = risk_rows(
        returns[first_test:], lambda a: var_es(windows, a), empirical_quantile(windows)
    )
    return {"logp": None, "risk": risk, "seconds": time.perf_counter() - start}


def truth_method(truth: dict, first_test: int) -> dict:
    """The simulation's own forecasts: its conditional density, VaR and ES."""
    p, keep = GJR_SKEWT, slice(first_test, None)
    mean, sd = truth["mean"][keep], truth["sd"][keep]

    def forecast(level: float) -> tuple[np.ndarray, np.ndarray]:
        q, tail = skewt_ppf(level, p["eta"], p["lam"]), skewt_tail_mean(level, p["eta"], p["lam"])
        return -(mean + sd * q), -(mean + sd * tail)

    def quantile(u: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return mean[steps] + sd[steps] * skewt_ppf(u, p["eta"], p["lam"])

    test = truth["returns"][keep]
    risk = risk_rows(test, forecast, quantile)
    return {"logp": truth["logp"][keep], "risk": risk, "seconds": None}  # nothing fitted


def glow(path: Path, options: dict, run_dir: Path, extra: tuple, samples: int) -> dict:
    """Trains the 1-D Glow through the command line's config, scores best.pt with
    `glow-eval`'s library function and backtests it as `glow-eval backtest=var` does."""
    from glow_train.evaluation.figures import evaluate
    from glow_train.series.backtest import backtest

    trained = glow1d_defaults(path, options, run_dir, extra)
    report = evaluate(trained["ckpt"], progress=False, device="cpu")
    tested = backtest(trained["ckpt"], samples=samples, out=run_dir / "backtest")
    return {
        "logp": -report.result.per_item.numpy(),
        "risk": tested["methods"]["glow1d"],
        "seconds": trained["seconds"],
        "ckpt": trained["ckpt"],
        "best_step": trained["step"],
        "eval_nll": report.summary["nll"],
        "eval_stderr_items": report.summary["stderr_items"],
    }


# ------------------------------------------------------------------ one series


def bench_series(
    name: str, out: Path, args: argparse.Namespace, csv: tuple[Path, str] | None = None
) -> list[dict]:
    """Every method's row on one series."""
    if csv is None:
        path, column, truth = make_series(name, out, args.length, args.seed)
    else:
        (path, column), truth = csv, None
    options = {"columns": [column], "transform": "log_return", "context": CONTEXT}
    run_dir = new_run_dir(out / "runs" / name)
    cfg = glow1d_config(path, options, run_dir, tuple(args.glow))
    returns, first_test = split(OmegaConf.to_container(cfg.dataset, resolve=True))
    methods: dict[str, dict] = {}
    if truth is not None:
        methods["truth"] = truth_method(truth, first_test)
    methods["iid_t"] = iid_t(returns, first_test)
    for kind in ARCH_MODELS:
        fitted = arch_method(returns, first_test, kind)
        if fitted is None:
            print(f"arch is not installed (pip install -e '.[finance]'): no {kind} row")
        else:
            methods[kind] = fitted
    methods["historical"] = historical(returns, first_test)
    if not args.no_glow:
        methods["glow1d"] = glow(path, options, run_dir, tuple(args.glow), args.samples)
    reference = methods.get(REFERENCE, {}).get("logp")
    rows = []
    for method, m in methods.items():
        row = {"series": name, "method": method, "test_returns": len(returns) - first_test}
        row |= {k: v for k, v in m.items() if k != "logp"}
        if m["logp"] is not None:
            nll = -np.asarray(m["logp"], dtype=np.float64)
            row["nats"], row["se"] = float(nll.mean()), standard_error(nll)
            if reference is not None:
                diff = nll + reference
                row["vs_gjr"], row["vs_gjr_se"] = float(diff.mean()), standard_error(diff)
        rows.append(row)
    return rows


def standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values)))


# ------------------------------------------------------------------ the table


HEADER = (
    "| series | method | test nats/return | vs GJR-GARCH-t | VaR 1 %: exceed. (exp.) "
    "| Kupiec p | Christ. p | ES Z2 (p) | VaR 5 %: exceed. (exp.) | Kupiec p | Christ. p "
    "| ES Z2 (p) | fit s |\n|" + " --- |" * 13
)


def format_row(row: dict) -> str:
    cells = [row["series"], LABELS.get(row["method"], row["method"])]
    if "nats" in row:
        cells.append(f"{row['nats']:.4f} ± {row['se']:.4f}")
    else:
        cells.append("")
    if "vs_gjr" in row and row["method"] != REFERENCE:
        cells.append(f"{row['vs_gjr']:+.4f} ± {row['vs_gjr_se']:.4f}")
    else:
        cells.append("")
    for r in row["risk"]:
        z2_p = "" if r.get("es_z2_p") is None else f" ({r['es_z2_p']:.3f})"
        cells += [
            f"{r['exceedances']} ({r['expected']:.1f})",
            f"{r['kupiec_p']:.3f}",
            f"{r['christoffersen_p']:.3f}",
            f"{r['es_z2']:+.3f}{z2_p}",
        ]
    cells.append("" if row["seconds"] is None else f"{row['seconds']:.1f}")
    return "| " + " | ".join(cells) + " |"


def format_table(rows: list[dict]) -> str:
    return "\n".join([HEADER, *(format_row(r) for r in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_market"))
    parser.add_argument(
        "--series",
        default=",".join(SERIES),
        help=f"comma-separated, from {', '.join(SERIES)}; empty with --csv: only that file",
    )
    parser.add_argument("--csv", type=Path, default=None, help="another CSV of daily prices")
    parser.add_argument("--column", default=None, help="the price column of --csv")
    parser.add_argument("--no-glow", action="store_true", help="the baselines only")
    parser.add_argument(
        "--glow",
        nargs="*",
        default=[],
        help="extra glow-train overrides (key=value) for the 1-D Glow (default: none)",
    )
    parser.add_argument("--samples", type=int, default=1000, help="backtest draws per step")
    parser.add_argument("--length", type=int, default=5000, help="simulated returns")
    parser.add_argument("--seed", type=int, default=0, help="the simulation's seed")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    names = [n for n in args.series.split(",") if n]
    unknown = [n for n in names if n not in SERIES]
    if unknown:
        parser.error(f"--series: unknown series {unknown[0]!r}; choose from {', '.join(SERIES)}")
    if (args.csv is None) != (args.column is None):
        parser.error("--csv and --column go together: the file and its price column")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.glow:
        print(f"1-D Glow with: {' '.join(args.glow)}")
    rows = []
    for name in names:
        rows += bench_series(name, args.out, args)
        print(f"{name}: done", file=sys.stderr, flush=True)
    if args.csv is not None:
        rows += bench_series(args.csv.stem, args.out, args, csv=(args.csv, args.column))
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2, default=_plain))


def _plain(value):
    """JSON for numpy values."""
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    main()
