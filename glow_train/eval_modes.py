"""``glow-eval backtest=<name>``: the registry of backtests of a series model.

Every backtest is one function ``(ckpt, **options) -> Written``
(:mod:`glow_train.modes`) registered in :data:`BACKTESTS` under its ``backtest=``
name; :func:`run_backtest` passes it the options its signature names, out of
``glow-eval``'s config. Each takes ``None`` for "the value in ``configs/eval.yaml``".

- ``var``: one-step VaR/ES over the test part of the series against historical
  simulation and GARCH(1,1)-t (:func:`glow_train.backtest.backtest`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from glow_train.backtest import backtest, format_table
from glow_train.config import EvalConfig, fill_defaults
from glow_train.distributed import resolve_device
from glow_train.modes import Mode, Written, run_registered

__all__ = ["BACKTESTS", "run_backtest", "var_backtest"]


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
    """``backtest=var``: the VaR/ES table of :func:`glow_train.backtest.backtest` (also
    written, with ``backtest.csv`` and ``backtest.png``, into ``out``); ``seed``:
    ``None`` draws with seed 0 (``glow-eval``'s ``seed`` is null: the checkpoint's,
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


def run_backtest(name: str, ckpt: str | os.PathLike, options: Mapping[str, Any]) -> Written:
    """Run ``BACKTESTS[name]`` on ``ckpt`` with the ``options`` its signature takes."""
    unknown = (
        f"backtest={name!r}: the one backtest is backtest=var"
        if list(BACKTESTS) == ["var"]
        else f"backtest={name!r}: choose one of {', '.join(BACKTESTS)}"
    )
    return run_registered(BACKTESTS, name, ckpt, options, unknown)


#: ``backtest=`` name -> the function that runs it (:func:`run_backtest`)
BACKTESTS: dict[str, Mode] = {"var": var_backtest}
