"""The commands of a series model: `glow-sample mode=forecast` (`forecast_paths`) and
`glow-eval backtest=<name>`, the registry of backtests.

Every backtest is one function `(ckpt, **options) -> Written`
(`glow_train.modes`) registered in `BACKTESTS` under its `backtest=`
name; `run_backtest` passes it the options its signature names, out of
`glow-eval`'s config. Each takes `None` for "the value in `configs/eval.yaml`".

- `var`: one-step VaR/ES over the test part of the series against historical
  simulation and GARCH(1,1)-t (`glow_train.series.backtest.backtest`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from glow_train.config import EvalConfig, SampleConfig, fill_defaults
from glow_train.modes import Mode, Written, run_registered
from glow_train.runtime.distributed import resolve_device
from glow_train.series.backtest import backtest, format_table
from glow_train.series.forecast import forecast

__all__ = ["BACKTESTS", "forecast_paths", "run_backtest", "var_backtest"]


def var_backtest(
    ckpt: str | os.PathLike,
    *,
    backtest_samples: int | None = None,
    seed: int | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool | None = None,
    device: str | torch.device | None = None,
    ema: bool | None = None,
) -> Written:
    """`backtest=var`: the VaR/ES table of `glow_train.series.backtest.backtest` (also
    written, with `backtest.csv` and `backtest.png`, into `out`); `seed`:
    `None` draws with seed 0 (`glow-eval`'s `seed` is null: the checkpoint's,
    which a backtest has no use for)."""
    opts = fill_defaults(
        "eval", EvalConfig, backtest_samples=backtest_samples, ema=ema, overwrite=overwrite
    )
    result = backtest(
        ckpt,
        samples=opts.backtest_samples,
        seed=0 if seed is None else seed,
        out=out,
        overwrite=opts.overwrite,
        device=resolve_device(str(device if device is not None else opts.device)),
        ema=opts.ema,
    )
    files = [Path(name) for name in result["files"]]
    text = [
        f"one-step VaR/ES of {result['series']} over {result['test_steps']} test steps "
        f"({result['samples']} draws per step): {files[0].parent}"
    ]
    return Written(files, [format_table(result)], text)


def forecast_paths(
    ckpt: str | os.PathLike,
    horizon: int | None = None,
    n: int | None = None,
    *,
    context_end: int | None = None,
    seed: int | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool | None = None,
    device: str | torch.device | None = None,
    ema: bool | None = None,
) -> Written:
    """`mode=forecast`: `n` paths of `horizon` steps of a series model with a
    context, written as `forecast.csv` and the fan chart `forecast.png`
    (`glow_train.series.forecast.forecast`)."""
    opts = fill_defaults(
        "sample",
        SampleConfig,
        horizon=horizon,
        n=n,
        context_end=context_end,
        seed=seed,
        ema=ema,
        overwrite=overwrite,
    )
    opts.device = str(device) if device is not None else opts.device
    result = forecast(
        ckpt,
        opts.horizon,
        opts.n,
        context_end=opts.context_end,
        seed=opts.seed,
        out=out,
        overwrite=opts.overwrite,
        device=resolve_device(str(opts.device)),
        ema=opts.ema,
    )
    units = "prices" if result.in_prices else "values"
    text = [
        f"{result.csv_path} ({opts.n} paths of {opts.horizon} steps, in {units})",
        str(result.png_path),
    ]
    return Written([result.csv_path, result.png_path], text=text)


def run_backtest(name: str, ckpt: str | os.PathLike, options: Mapping[str, Any]) -> Written:
    """Run `BACKTESTS[name]` on `ckpt` with the `options` its signature takes."""
    unknown = (
        f"backtest={name!r}: the one backtest is backtest=var"
        if list(BACKTESTS) == ["var"]
        else f"backtest={name!r}: choose one of {', '.join(BACKTESTS)}"
    )
    return run_registered(BACKTESTS, name, ckpt, options, unknown)


#: `backtest=` name -> the function that runs it (`run_backtest`)
BACKTESTS: dict[str, Mode] = {"var": var_backtest}
