"""Cutting a time series into the items of `dataset=csv` with `dataset.window` or
`dataset.context`, by time: train (the first part), validation, test (the last part).

Without a context each part yields its own windows of `W` steps every `stride`
steps, so no window straddles a boundary. With `dataset.context=C` an item is the
`C` steps before a window and then the window (`(C + W)·c` values, time-major),
and the window lies in the part while its context may reach back into the part before:
the past is known when forecasting. With `dataset.memory=M` too, the `M` steps
before the context lead each item, reaching back as far as the series goes: steps
before its start are `NaN` (the model's recursions start there), and never a step
after the window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from glow_train.data.checks import split_count
from glow_train.errors import DataError

__all__ = ["split_series", "padded_rows", "log_returns"]


def _windows(part: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Windows of `window` consecutive rows every `stride` rows, flattened time-major."""
    starts = range(0, len(part) - window + 1, stride)
    return (
        np.stack([part[s : s + window].reshape(-1) for s in starts])
        if len(starts)
        else (np.empty((0, window * part.shape[1])))
    )


def padded_rows(series: np.ndarray, starts: np.ndarray | range, span: int) -> np.ndarray:
    """Rows of `span` consecutive steps of `series` `(T, c)` from each of `starts`
    (which may be negative: the steps before the series' start are `NaN`), flattened
    time-major: `(N, span·c)`."""
    starts = np.asarray(starts, dtype=np.int64)
    pad = max(0, -int(starts.min())) if len(starts) else 0
    padded = np.concatenate([np.full((pad, series.shape[1]), np.nan), series])
    index = starts[:, None] + pad + np.arange(span)[None, :]
    return padded[index].reshape(len(starts), -1)


def _bounds(cfg: dict[str, Any], t: int) -> dict[str, tuple[int, int]]:
    """`[a, b)` of each part of `t` steps: train first, then validation, then test
    (`dataset.val_size` and `dataset.test_size` steps, or fractions of `t`)."""
    n_test, n_val = split_count(cfg, "test_size", t), split_count(cfg, "val_size", t)
    return {
        "train": (0, t - n_test - n_val),
        "val": (t - n_test - n_val, t - n_test),
        "test": (t - n_test, t),
    }


def _enough(parts: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """`parts`, when its training part has at least 2 items."""
    if len(parts["train"]) < 2:
        raise DataError(f"dataset.path={path}: fewer than 2 training windows; add data")
    return parts


def split_series(series: np.ndarray, cfg: dict[str, Any], path: Path) -> dict[str, np.ndarray]:
    """Cut a series `(T, c)` into train/val/test windows, by time.

    `cfg` is `dataset.*` (`window`, `stride`, `context`, the split sizes); `path` names the
    file in errors.
    """
    window, stride = int(cfg.get("window") or 1), int(cfg["stride"])
    t = len(series)
    if cfg.get("context") is not None:
        return _split_with_context(series, cfg, path, window, stride)
    if window > t:
        raise DataError(
            f"dataset.window={window} is longer than the series in {path} ({t} values); "
            "lower dataset.window"
        )
    parts = {}
    for split, (a, b) in _bounds(cfg, t).items():
        if split == "val" and a == b:  # no validation part
            parts[split] = np.empty((0, window * series.shape[1]))
            continue
        if b - a < window:
            raise DataError(
                f"dataset.path={path}: the {split} part has {max(b - a, 0)} of the series' {t} "
                f"values, fewer than dataset.window={window}; lower dataset.window or "
                "change dataset.test_size/val_size"
            )
        parts[split] = _windows(series[a:b], window, stride)
    return _enough(parts, path)


def _split_with_context(
    series: np.ndarray, cfg: dict[str, Any], path: Path, window: int, stride: int
) -> dict[str, np.ndarray]:
    """Items of `context + window` consecutive steps whose window lies in the part; the
    context may reach back into the part before (the past is known when forecasting)."""
    context, t = int(cfg["context"]), len(series)
    memory = int(cfg.get("memory") or 0)
    span = context + window
    if span >= t:
        raise DataError(
            f"dataset.context={context} with dataset.window={window} spans {span} steps, and "
            f"the series in {path} has {t}; lower dataset.context"
        )
    parts = {}
    for split, (a, b) in _bounds(cfg, t).items():
        first = max(a - context, 0)
        starts = range(first, b - span + 1, stride)
        if len(starts) == 0:
            if split == "val" and a == b:  # no validation part
                parts[split] = np.empty((0, span * series.shape[1]))
                continue
            raise DataError(
                f"dataset.path={path}: the {split} part ({max(b - a, 0)} of {t} steps) holds no "
                f"window of {window} after a context of {context}; lower dataset.context or "
                "change dataset.test_size/val_size"
            )
        parts[split] = padded_rows(series, np.asarray(starts) - memory, memory + span)
    return _enough(parts, path)


def log_returns(path: Path, columns: list[str], values: np.ndarray) -> np.ndarray:
    r"""$r_t = \log(p_{t+1} / p_t)$ of every column, `(T - 1, c)`."""
    if len(values) < 2:
        raise DataError(f"dataset.path={path}: log-returns need at least 2 rows")
    bad = np.argwhere(values <= 0)
    if len(bad):
        i, j = bad[0]
        raise DataError(
            f"dataset.path={path}: column {columns[j]!r} has a value <= 0 (data row "
            f"{i + 1}), which has no log-return; use dataset.transform=none"
        )
    return np.diff(np.log(values), axis=0)
