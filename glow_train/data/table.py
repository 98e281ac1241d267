r"""Numeric tables and time series from a CSV file (`dataset=csv`).

Rows of a table: each item is one row's chosen columns, `(D,)` float. The rows
are shuffled with `dataset.split_seed` (identical rows kept together, see
`glow_train.data.quality`) and cut into test (first), validation and train parts
of `dataset.test_size` and `dataset.val_size` (a fraction below 1 or a count).

Time series (`dataset.window=W`): the chosen columns, in file order, optionally
turned into log-returns (`dataset.transform=log_return`:
$r_t = \log(p_t / p_{t-1})$, one value fewer), are cut by time into train
(the first part), validation and test (the last part); each part yields its own
windows of `W` consecutive values every `dataset.stride` steps, so no window
straddles a boundary. An item is a window flattened time-major:
`(W·c,)` with dimension `t·c + j` holding column `j` at step `t`.

The statistics of the training items (per dimension) go into the data's
`DataSpec`; the objective standardises with them and
counts the log-determinant, so every likelihood is in the data's own units.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from glow_train.config import TableDatasetConfig
from glow_train.data.checks import int_key, require_key, split_count
from glow_train.data.csvfile import HEADERS, header_choice, read_columns
from glow_train.data.quality import check_values, grouped_split
from glow_train.data.spec import DataSource, DataSpec
from glow_train.data.windows import log_returns, split_series
from glow_train.errors import ConfigError, DataError, show

__all__ = ["SOURCE", "VectorDataset", "Table", "load_table", "TRANSFORMS"]

TRANSFORMS = ("none", "log_return")


class VectorDataset(Dataset):
    """In-memory float vectors `(N, D)`; items `(float32 (D,), -1)` (no labels)."""

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
    """The three splits of a `dataset=csv` config as arrays, and their description.

    `series`: for time series, the file columns the windows were cut from (the
    dimensions repeat them, time-major); empty for rows of a table.
    """

    def __init__(
        self,
        parts: dict[str, np.ndarray],
        columns: list[str],
        cfg: dict[str, Any],
        series: list[str] | None = None,
    ):
        self.parts = parts  # split -> (N, D) float64
        self.columns = columns  # names of the D dimensions
        train = parts["train"]
        self.series = list(series or [])
        c = len(self.series)
        memory = int(cfg.get("memory") or 0) if cfg.get("context") and c else 0
        # a memory's steps (NaN before the series' start) take its first context step's
        loc, scale = train[:, memory * c :].mean(axis=0), train[:, memory * c :].std(axis=0)
        self.loc = np.concatenate([np.tile(loc[:c], memory), loc])
        self.scale = np.concatenate([np.tile(scale[:c], memory), scale])
        window = cfg.get("window")
        constant = self.scale <= 1e-12 * np.maximum(np.abs(self.loc), 1.0)
        if constant.any():
            names = list(dict.fromkeys(self._column_of(int(i)) for i in np.flatnonzero(constant)))
            raise DataError(
                f"dataset.path={cfg['path']}: column(s) {', '.join(map(repr, names))} are "
                "constant on the training split and have no density; leave them out of "
                "dataset.columns"
            )
        self._refuse_unresolvable_columns(cfg["path"])
        self._warn_of_repeated_integers(train, cfg["path"])
        self._refuse_dependent_columns(train[:, memory * c :], cfg["path"], memory * c)
        transform = cfg.get("transform") or "none"
        context = cfg.get("context")
        self.spec = DataSpec(
            "vector",
            (len(columns),),
            None,
            0,
            columns=columns,
            loc=self.loc.tolist(),
            scale=self.scale.tolist(),
            transform=None if transform == "none" else transform,
            window=None if window is None and context is None else int(window or 1),
            series=self.series,
            context=None if context is None else int(context),
            memory=memory or None,
        )

    def _refuse_unresolvable_columns(self, path: str) -> None:
        """Items reach the model in float32, whose rounding (a relative 6e-8) must stay
        below 1e-3 of each column's spread: a column of 1e9 + N(0, 1) (a timestamp, an
        id) would round to a few values and have a false density. Refused, naming it."""
        rounding = 6e-8 * np.abs(self.loc)
        coarse = rounding > 1e-3 * self.scale
        if coarse.any():
            i = int(np.flatnonzero(coarse)[0])
            raise DataError(
                f"dataset.path={path}: column {self._column_of(i)!r} varies by "
                f"{self.scale[i]:.3g} around {self.loc[i]:.6g}, finer than float32 resolves "
                "there; subtract an offset from it in the file, or leave it out of "
                "dataset.columns"
            )

    def _warn_of_repeated_integers(self, train: np.ndarray, path: str) -> None:
        """Integer columns whose values repeat (counts, ratings, categories as numbers):
        a continuous density can put ever higher spikes on the repeated values, so the
        figures fall without bound; warned once, naming them."""
        whole = (train == np.round(train)).all(axis=0)
        repeated = [
            self._column_of(i)
            for i in np.flatnonzero(whole)
            if len(np.unique(train[:, i])) <= len(train) // 2
        ]
        if repeated:
            names = ", ".join(map(repr, dict.fromkeys(repeated)))
            warnings.warn(
                f"dataset.path={path}: column(s) {names} hold whole numbers that repeat; a "
                "density of continuous values can grow without bound on them (the figures "
                "then mean little): add uniform noise in [0, 1) to them, or leave them out "
                "of dataset.columns",
                stacklevel=2,
            )

    def _refuse_dependent_columns(self, train: np.ndarray, path: str, skip: int = 0) -> None:
        """Dimensions of which a combination (nearly) does not vary (a duplicate column,
        a total of parts, a series repeated) leave the items on a hyperplane, where
        there is no density (and float32 cannot tell them from one): refused, naming
        the columns, when the training correlation matrix's smallest eigenvalue is
        below `1e-9 D`, i.e. some combination varies by less than `sqrt(1e-9 D)`
        of the columns' spread. Checked when there are more training items than
        dimensions, on the dimensions after the first `skip` (a memory's, which
        repeat the same series further back)."""
        n, d = train.shape
        if n <= d or d < 2:
            return
        z = (train - self.loc[skip:]) / self.scale[skip:]
        values, vectors = np.linalg.eigh(z.T @ z / n)
        if values[0] > 1e-9 * d:
            return
        weights = np.abs(vectors[:, 0])
        dims = np.flatnonzero(weights > 0.1 * weights.max()) + skip
        names = list(dict.fromkeys(self._column_of(int(i)) for i in dims))
        spread = float(np.sqrt(max(values[0], 0.0)))
        if len(names) == 1:  # one series: its windows obey a linear recurrence
            raise DataError(
                f"dataset.path={path}: the windows of {names[0]!r} are linearly dependent on "
                f"the training split (a combination of their values varies by {spread:.1e} of "
                "their spread: the series follows an exact linear recurrence, such as a line "
                "or a sine), so they have no density; model a series with noise in it"
            )
        what = f"columns {', '.join(map(repr, names))}"
        if self.series:
            what = f"the windows of {what}"
        raise DataError(
            f"dataset.path={path}: {what} are linearly dependent on the training split (a "
            f"combination of them varies by {spread:.1e} of their spread: a column repeated, "
            "a total of others, or a series following an exact linear recurrence), so the "
            "items have no density; leave one of them out of dataset.columns"
        )

    def _column_of(self, dim: int) -> str:
        """The file column behind dimension `dim` (a window's dims repeat the columns)."""
        if not self.series:
            return self.columns[dim]
        return self.series[dim % len(self.series)]


# --------------------------------------------------------------------------- splitting


def _split_rows(values: np.ndarray, cfg: dict[str, Any], path: Path) -> dict[str, np.ndarray]:
    n = len(values)
    n_test, n_val = split_count(cfg, "test_size", n), split_count(cfg, "val_size", n)
    n_train = n - n_test - n_val
    if n_test < 1 or n_train < 2:
        raise DataError(
            f"dataset.path={path}: {n} rows split into {n_test} test, {n_val} validation and "
            f"{max(n_train, 0)} training rows (dataset.test_size={show(cfg['test_size'])}, "
            f"dataset.val_size={show(cfg['val_size'])}); a table needs at least 1 test row and 2 "
            "training rows: "
            + (
                "add rows"
                if n < 3
                else "set dataset.test_size/val_size to counts, e.g. dataset.test_size=1"
            )
        )
    parts = grouped_split(path, values, int(cfg["split_seed"]), n_test, n_val)
    return {name: values[index] for name, index in parts.items()}


# --------------------------------------------------------------------------- the source

_CACHE: dict[tuple, Table] = {}
_SPLIT_KEYS = (
    "path",
    "columns",
    "header",
    "delimiter",
    "dropna",
    "window",
    "context",
    "memory",
    "stride",
    "transform",
    "val_size",
    "test_size",
    "split_seed",
)


def load_table(cfg: dict[str, Any]) -> Table:
    """Read, check and split a `dataset=csv` config's file (cached per file version)."""
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


def series_values(cfg: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """A time series config's file as `(columns, values (T, c), levels)`: `values` is
    what the items are cut from (the log-returns with `transform=log_return`), and
    `levels` the file's values `(T + 1, c)` then (`levels[t]` is the level after
    `values[:t]`), else `None`."""
    path = Path(str(require_key(cfg, "path"))).expanduser()
    columns, values = _read(path, cfg)
    if (cfg.get("transform") or "none") == "log_return":
        return columns, log_returns(path, columns, values), values
    return columns, values, None


def _read(path: Path, cfg: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    wanted = cfg.get("columns")
    return read_columns(
        path,
        None if wanted is None else [str(c) for c in wanted],
        header=header_choice(cfg.get("header")),
        delimiter=cfg.get("delimiter") or ",",
        dropna=bool(cfg.get("dropna")),
    )


def _load(path: Path, cfg: dict[str, Any]) -> Table:
    columns, values = _read(path, cfg)
    if (cfg.get("transform") or "none") == "log_return":
        values = log_returns(path, columns, values)
    window, context = cfg.get("window"), cfg.get("context")
    check_values(path, columns, values, series=window is not None or context is not None)
    if window is None and context is None:
        return Table(_split_rows(values, cfg, path), columns, cfg)
    parts = split_series(values, cfg, path)
    memory = int(cfg.get("memory") or 0) if context is not None else 0
    first = -int(context or 0) - memory  # the past is numbered -(M + C)..-1, the window 0..W-1
    dims = [f"{c}[{t}]" for t in range(first, int(window or 1)) for c in columns]
    return Table(parts, dims, cfg, series=columns)


def validate(cfg: dict[str, Any]) -> None:
    """Check a `dataset=csv` config without reading the file (`ConfigError` if bad)."""
    require_key(cfg, "path")
    if header_choice(cfg.get("header")) is None:
        raise ConfigError(
            f"dataset.header must be one of {', '.join(HEADERS)}, got {cfg['header']!r}"
        )
    if (cfg.get("transform") or "none") not in TRANSFORMS:
        raise ConfigError(
            f"dataset.transform must be one of {', '.join(TRANSFORMS)}, got {cfg['transform']!r}"
        )
    if cfg.get("context") is not None:
        int_key(cfg, "context", 1)
    if cfg.get("memory") is not None:
        int_key(cfg, "memory", 0)
    if cfg.get("window") is not None or cfg.get("context") is not None:
        if cfg.get("window") is not None:
            int_key(cfg, "window", 1)
        int_key(cfg, "stride", 1)
    elif (cfg.get("transform") or "none") != "none":
        raise ConfigError(
            "dataset.transform=log_return needs a time series: set dataset.window or "
            "dataset.context"
        )
    int_key(cfg, "split_seed", 0)
    columns = cfg.get("columns")
    if columns is not None and len(columns) == 0:
        raise ConfigError(
            "dataset.columns is empty; name the columns or use null for all numeric ones"
        )
    if columns is not None and len(set(columns)) < len(columns):
        twice = next(c for c in columns if list(columns).count(c) > 1)
        raise ConfigError(f"dataset.columns names {twice!r} twice; name each column once")
    if len(cfg.get("delimiter") or ",") != 1:
        raise ConfigError(f"dataset.delimiter must be one character, got {cfg['delimiter']!r}")


def describe(cfg: dict[str, Any], num_classes: int) -> DataSpec:
    """The `DataSpec` of a table (it reads the file; `ConfigError`: too few columns)."""
    validate(cfg)
    spec = load_table(cfg).spec
    if spec.num_dims - spec.context_dims < (1 if spec.context else 2):
        raise ConfigError(
            f"dataset=csv yields {spec.num_dims}-dimensional items; a flow needs at least 2: "
            "choose more columns or set dataset.window"
        )
    return spec


def build(cfg: dict[str, Any], split: str) -> Dataset:
    """The `split` of the table, as float vectors."""
    table = load_table(cfg)
    return VectorDataset(torch.from_numpy(table.parts[split]).float())


SOURCE = DataSource(
    "csv", build, validate=validate, describe=describe, kind="vector", schema=TableDatasetConfig
)
