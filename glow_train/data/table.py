"""Numeric tables and time series from a CSV file (``dataset=csv``).

Rows of a table: each item is one row's chosen columns, ``(D,)`` float. The rows
are shuffled with ``dataset.split_seed`` and cut into test (first), validation and
train parts of ``dataset.test_size`` and ``dataset.val_size`` (a fraction below 1
or a count).

Time series (``dataset.window=W``): the chosen columns, in file order, optionally
turned into log-returns (``dataset.transform=log_return``:
:math:`r_t = \\log(p_t / p_{t-1})`, one value fewer), are cut by time into train
(the first part), validation and test (the last part); each part yields its own
windows of ``W`` consecutive values every ``dataset.stride`` steps, so no window
straddles a boundary. An item is a window flattened time-major:
``(W·c,)`` with dimension ``t·c + j`` holding column ``j`` at step ``t``.

The statistics of the training items (per dimension) go into the data's
:class:`~glow_train.data.spec.DataSpec`; the objective standardises with them and
counts the log-determinant, so every likelihood is in the data's own units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from glow_train.config import TableDatasetConfig
from glow_train.data.checks import int_key, require_key
from glow_train.data.csvfile import HEADERS, header_choice, read_columns
from glow_train.data.spec import DataSource, DataSpec
from glow_train.errors import ConfigError, DataError

__all__ = ["SOURCE", "VectorDataset", "Table", "load_table", "TRANSFORMS"]

TRANSFORMS = ("none", "log_return")


class VectorDataset(Dataset):
    """In-memory float vectors ``(N, D)``; items ``(float32 (D,), -1)`` (no labels)."""

    num_classes = 0

    def __init__(self, values: Tensor):
        if values.ndim != 2:
            raise ValueError("values must be (N, D)")
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.values[index], -1


class Table:
    """The three splits of a ``dataset=csv`` config as arrays, and their description."""

    def __init__(self, parts: dict[str, np.ndarray], columns: list[str], cfg: dict[str, Any]):
        self.parts = parts  # split -> (N, D) float64
        self.columns = columns  # names of the D dimensions
        train = parts["train"]
        self.loc = train.mean(axis=0)
        self.scale = train.std(axis=0)
        window = cfg.get("window")
        self.series = _series_names(columns, window)
        constant = self.scale <= 1e-12 * np.maximum(np.abs(self.loc), 1.0)
        if constant.any():
            names = list(
                dict.fromkeys(_column_of(columns, window, int(i)) for i in np.flatnonzero(constant))
            )
            raise DataError(
                f"dataset.path={cfg['path']}: column(s) {', '.join(map(repr, names))} are "
                "constant on the training split and have no density; leave them out of "
                "dataset.columns"
            )
        transform = cfg.get("transform") or "none"
        self.spec = DataSpec(
            "vector",
            (len(columns),),
            None,
            0,
            columns=columns,
            loc=self.loc.tolist(),
            scale=self.scale.tolist(),
            transform=None if transform == "none" else transform,
            window=window,
            series=self.series,
        )


def _series_names(columns: list[str], window: int | None) -> list[str]:
    if window is None:
        return []
    return [c[: -len("[0]")] for c in columns[: len(columns) // window]]


def _column_of(columns: list[str], window: int | None, dim: int) -> str:
    """The file column behind dimension ``dim`` (a window's dims repeat the columns)."""
    if window is None:
        return columns[dim]
    names = _series_names(columns, window)
    return names[dim % len(names)]


# --------------------------------------------------------------------------- splitting


def _size(cfg: dict[str, Any], key: str, total: int) -> int:
    """``dataset.<key>`` (a fraction in [0, 1) or a whole count) as a count of ``total``."""
    value = float(require_key(cfg, key))
    if value < 0 or (value >= 1 and not value.is_integer()):
        raise ConfigError(f"dataset.{key} must be a fraction in [0, 1) or a count, got {value:g}")
    return int(value) if value >= 1 else int(round(value * total))


def _split_rows(values: np.ndarray, cfg: dict[str, Any], path: Path) -> dict[str, np.ndarray]:
    n = len(values)
    n_test, n_val = _size(cfg, "test_size", n), _size(cfg, "val_size", n)
    n_train = n - n_test - n_val
    if n_test < 1 or n_train < 2:
        raise DataError(
            f"dataset.path={path}: {n} rows split into {n_test} test, {n_val} validation and "
            f"{max(n_train, 0)} training rows (dataset.test_size={cfg['test_size']:g}, "
            f"dataset.val_size={cfg['val_size']:g}); a table needs at least 1 test row and 2 "
            "training rows: "
            + (
                "add rows"
                if n < 3
                else "set dataset.test_size/val_size to counts, e.g. dataset.test_size=1"
            )
        )
    order = np.random.default_rng(int(cfg["split_seed"])).permutation(n)
    return {
        "test": values[order[:n_test]],
        "val": values[order[n_test : n_test + n_val]],
        "train": values[order[n_test + n_val :]],
    }


def _windows(part: np.ndarray, window: int, stride: int) -> np.ndarray:
    """Windows of ``window`` consecutive rows every ``stride`` rows, flattened time-major."""
    starts = range(0, len(part) - window + 1, stride)
    return (
        np.stack([part[s : s + window].reshape(-1) for s in starts])
        if len(starts)
        else (np.empty((0, window * part.shape[1])))
    )


def _split_series(series: np.ndarray, cfg: dict[str, Any], path: Path) -> dict[str, np.ndarray]:
    window, stride = int(cfg["window"]), int(cfg["stride"])
    t = len(series)
    if window > t:
        raise DataError(
            f"dataset.window={window} is longer than the series in {path} ({t} values); "
            "lower dataset.window"
        )
    n_test, n_val = _size(cfg, "test_size", t), _size(cfg, "val_size", t)
    bounds = {
        "train": (0, t - n_test - n_val),
        "val": (t - n_test - n_val, t - n_test),
        "test": (t - n_test, t),
    }
    parts = {}
    for split, (a, b) in bounds.items():
        if split == "val" and n_val == 0:
            parts[split] = np.empty((0, window * series.shape[1]))
            continue
        if b - a < window:
            raise DataError(
                f"dataset.path={path}: the {split} part has {max(b - a, 0)} of the series' {t} "
                f"values, fewer than dataset.window={window}; lower dataset.window or "
                "change dataset.test_size/val_size"
            )
        parts[split] = _windows(series[a:b], window, stride)
    if len(parts["train"]) < 2:
        raise DataError(f"dataset.path={path}: fewer than 2 training windows; add data")
    return parts


# --------------------------------------------------------------------------- the source

_CACHE: dict[tuple, Table] = {}
_SPLIT_KEYS = (
    "path",
    "columns",
    "header",
    "delimiter",
    "dropna",
    "window",
    "stride",
    "transform",
    "val_size",
    "test_size",
    "split_seed",
)


def load_table(cfg: dict[str, Any]) -> Table:
    """Read, check and split a ``dataset=csv`` config's file (cached per file version)."""
    path = Path(str(require_key(cfg, "path"))).expanduser()
    try:
        stat = path.stat()
        version = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = None
    key = (str(path.resolve()), version, *(repr(cfg.get(k)) for k in _SPLIT_KEYS))
    if key not in _CACHE:
        _CACHE.clear()  # one file at a time is what a run uses
        _CACHE[key] = _load(path, cfg)
    return _CACHE[key]


def _load(path: Path, cfg: dict[str, Any]) -> Table:
    wanted = cfg.get("columns")
    columns, values = read_columns(
        path,
        None if wanted is None else [str(c) for c in wanted],
        header=header_choice(cfg.get("header")),
        delimiter=cfg.get("delimiter") or ",",
        dropna=bool(cfg.get("dropna")),
    )
    if (cfg.get("transform") or "none") == "log_return":
        if len(values) < 2:
            raise DataError(f"dataset.path={path}: log-returns need at least 2 rows")
        bad = np.argwhere(values <= 0)
        if len(bad):
            i, j = bad[0]
            raise DataError(
                f"dataset.path={path}: column {columns[j]!r} has a value <= 0 (data row "
                f"{i + 1}), which has no log-return; use dataset.transform=none"
            )
        values = np.diff(np.log(values), axis=0)
    window = cfg.get("window")
    if window is None:
        parts = _split_rows(values, cfg, path)
        dims = columns
    else:
        parts = _split_series(values, cfg, path)
        dims = [f"{c}[{t}]" for t in range(int(window)) for c in columns]
    return Table(parts, dims, cfg)


def validate(cfg: dict[str, Any]) -> None:
    require_key(cfg, "path")
    if header_choice(cfg.get("header")) is None:
        raise ConfigError(
            f"dataset.header must be one of {', '.join(HEADERS)}, got {cfg['header']!r}"
        )
    if (cfg.get("transform") or "none") not in TRANSFORMS:
        raise ConfigError(
            f"dataset.transform must be one of {', '.join(TRANSFORMS)}, got {cfg['transform']!r}"
        )
    if cfg.get("window") is not None:
        int_key(cfg, "window", 1)
        int_key(cfg, "stride", 1)
    elif (cfg.get("transform") or "none") != "none":
        raise ConfigError("dataset.transform=log_return needs a time series: set dataset.window")
    int_key(cfg, "split_seed", 0)
    columns = cfg.get("columns")
    if columns is not None and len(columns) == 0:
        raise ConfigError(
            "dataset.columns is empty; name the columns or use null for all numeric ones"
        )
    if len(cfg.get("delimiter") or ",") != 1:
        raise ConfigError(f"dataset.delimiter must be one character, got {cfg['delimiter']!r}")


def describe(cfg: dict[str, Any], num_classes: int) -> DataSpec:
    validate(cfg)
    spec = load_table(cfg).spec
    if spec.num_dims < 2:
        raise ConfigError(
            f"dataset=csv yields {spec.num_dims}-dimensional items; a flow needs at least 2: "
            "choose more columns or set dataset.window"
        )
    return spec


def build(cfg: dict[str, Any], split: str) -> Dataset:
    table = load_table(cfg)
    return VectorDataset(torch.from_numpy(table.parts[split]).float())


SOURCE = DataSource(
    "csv", build, validate=validate, describe=describe, kind="vector", schema=TableDatasetConfig
)
