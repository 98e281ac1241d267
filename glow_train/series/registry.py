"""The commands of a series model: `glow-sample mode=forecast` (`forecast_paths`) and
`glow-eval backtest=<name>`, the registry of backtests.

Every backtest is a mode of `glow-eval` (`glow_train.modes.command_mode`: a function
of the checkpoint and `glow-eval`'s options, which declares the options it uses)
registered in `BACKTESTS` under its `backtest=` name; `run_backtest` runs it with
`glow-eval`'s config and refuses the options it does not use.

- `var`: one-step VaR/ES over the test part of the series against historical
  simulation and GARCH(1,1)-t (`glow_train.series.backtest.backtest`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from glow_train.config import EvalConfig, SampleConfig
from glow_train.modes import Mode, Written, command_mode, run_registered
from glow_train.runtime.distributed import resolve_device
from glow_train.series.backtest import backtest, format_table
from glow_train.series.forecast import forecast

__all__ = ["BACKTESTS", "forecast_paths", "run_backtest", "var_backtest"]


@command_mode(
    "eval",
    "backtest=var",
    ("backtest_samples", "seed", "out", "overwrite", "device", "ema"),
)
def var_backtest(ckpt: str | os.PathLike, opts: EvalConfig) -> Written:
    """`backtest=var`: the VaR/ES table of `glow_train.series.backtest.backtest` (also
    written, with `backtest.csv` and `backtest.png`, into `out`).

    It runs over the test part of the series with the checkpoint's own data, in
    float64 with one draw set per step, so `glow-eval`'s `split`, `dataset`, `draws`,
    `batch_size`, `precision` and the other options of its figures are refused.
    `seed`: `None` (`glow-eval`'s default, "the checkpoint's", which a backtest has no
    use for) draws with seed 0.

    Args:
        ckpt: a checkpoint of a series model with a context, or a run folder.
        opts: the options (`glow_train.modes.command_mode`).

    Returns:
        The written files, described in one line, and the table as a note.
    """
    result = backtest(
        ckpt,
        samples=opts.backtest_samples,
        seed=0 if opts.seed is None else opts.seed,
        out=opts.out,
        overwrite=opts.overwrite,
        device=resolve_device(opts.device),
        ema=opts.ema,
    )
    files = [Path(name) for name in result["files"]]
    text = [
        f"one-step VaR/ES of {result['series']} over {result['test_steps']} test steps "
        f"({result['samples']} draws per step): {files[0].parent}"
    ]
    return Written(files, [format_table(result)], text)


@command_mode(
    "sample",
    "mode=forecast",
    ("horizon", "n", "context_end", "seed", "out", "overwrite", "device", "ema"),
    positional=("horizon", "n"),
)
def forecast_paths(ckpt: str | os.PathLike, opts: SampleConfig) -> Written:
    """`mode=forecast`: `n` paths of `horizon` steps of a series model with a context,
    written as `forecast.csv` and the fan chart `forecast.png`
    (`glow_train.series.forecast.forecast`).

    Args:
        ckpt: a checkpoint of a series model with a context, or a run folder.
        opts: the options (`glow_train.modes.command_mode`).

    Returns:
        The two files, the table described by its size and units.
    """
    result = forecast(
        ckpt,
        opts.horizon,
        opts.n,
        context_end=opts.context_end,
        seed=opts.seed,
        out=opts.out,
        overwrite=opts.overwrite,
        device=resolve_device(opts.device),
        ema=opts.ema,
    )
    units = "prices" if result.in_prices else "values"
    text = [
        f"{result.csv_path} ({opts.n} paths of {opts.horizon} steps, in {units})",
        str(result.png_path),
    ]
    return Written([result.csv_path, result.png_path], text=text)


def run_backtest(
    name: str, ckpt: str | os.PathLike, options: Any = None, typed: Iterable[str] = ()
) -> Written:
    """Run `BACKTESTS[name]` on `ckpt` with `options` (`glow-eval`'s config, an
    `EvalConfig` or a mapping of some of its keys); an option in `typed` (set on the
    command line) that the backtest does not use is refused
    (`glow_train.modes.run_registered`)."""
    unknown = (
        f"backtest={name!r}: the one backtest is backtest=var"
        if list(BACKTESTS) == ["var"]
        else f"backtest={name!r}: choose one of {', '.join(BACKTESTS)}"
    )
    return run_registered(BACKTESTS, name, ckpt, options, unknown, typed)


#: `backtest=` name -> the mode that runs it (`run_backtest`)
BACKTESTS: dict[str, Mode] = {"var": var_backtest}
