"""Data problems that would give a figure instead of an error, warned once in one line
each, naming the column and the count (`dataset=csv`):

- a long run of identical values in a series (a price constant for months gives as many
  log-returns of exactly 0: the density grows a spike there and the validation figure
  worsens while training goes on);
- rows repeated in a table: each group of identical rows is kept whole on one side of
  the test / validation / training split (`grouped_split`), so no test row is a copy of
  a training row, and the warning says so;
- values far beyond the rest of their column by a robust z-score
  $|x - \\operatorname{median}| / (1.4826 \\cdot \\operatorname{MAD})$ over its distinct
  values (a unit error, a misplaced decimal point).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

__all__ = ["EXTREME_Z", "RUN_SHARE", "RUN_MIN", "check_values", "grouped_split"]

#: a value this many robust standard deviations from its column's median is warned of
EXTREME_Z = 100.0
#: a run of identical consecutive values in a series is warned of from this length...
RUN_MIN = 20
#: ...and this share of the series
RUN_SHARE = 0.02


def _warn(text: str) -> None:
    warnings.warn(text, stacklevel=3)


def check_values(path: Path, columns: list[str], values: np.ndarray, series: bool) -> None:
    """Warn of long runs of identical values (a series) and of extreme values.

    Args:
        path: the file, named in the warnings.
        columns: the names of the columns of `values`.
        values: `(N, c)`, what the items are made of (a series' log-returns when
            `dataset.transform=log_return`).
        series: whether the rows are in time order (`dataset.window` or `context`).
    """
    n = len(values)
    if series and n > 1:
        for j, name in enumerate(columns):
            length, start = _longest_run(values[:, j])
            if length >= max(RUN_MIN, RUN_SHARE * n):
                _warn(
                    f"dataset.path={path}: column {name!r} holds {length} identical values "
                    f"in a row ({values[start, j]:g}, data rows {start + 1}-{start + length} "
                    f"of {n}); the density grows a spike there and its figures mislead: "
                    "remove that stretch (e.g. days a market was closed) from the file"
                )
    for j, name in enumerate(columns):
        z = _robust_z(values[:, j])
        far = np.flatnonzero(z > EXTREME_Z)
        if len(far):
            worst = far[np.argmax(z[far])]
            _warn(
                f"dataset.path={path}: column {name!r} has {len(far)} value(s) more than "
                f"{EXTREME_Z:g} robust standard deviations from its median (the farthest "
                f"{values[worst, j]:g}, data row {worst + 1}); a unit or typing error? "
                "It dominates the scale the model learns: fix or remove it"
            )


def _longest_run(column: np.ndarray) -> tuple[int, int]:
    """The length and first index of the longest run of equal consecutive values."""
    change = np.flatnonzero(np.diff(column) != 0) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [len(column)]]))
    k = int(np.argmax(lengths))
    return int(lengths[k]), int(starts[k])


def _robust_z(column: np.ndarray) -> np.ndarray:
    """$|x - m| / (1.4826 \\cdot \\operatorname{MAD})$ per value, the median $m$ and the
    MAD taken over the column's distinct values (zeros where that MAD is 0)."""
    distinct = np.unique(column)  # a run of one value (warned of apart) sets no scale
    centre = np.median(distinct)
    scale = 1.4826 * np.median(np.abs(distinct - centre))
    if scale <= 0:
        return np.zeros_like(column)
    return np.abs(column - centre) / scale


def grouped_split(
    path: Path, values: np.ndarray, seed: int, n_test: int, n_val: int
) -> dict[str, np.ndarray]:
    """The row indices of the test, validation and training parts of a table.

    The rows are shuffled with `seed`; without repeated rows the parts are the first
    `n_test`, the next `n_val` and the rest. Identical rows form a group that stays
    whole on one side: the groups are shuffled instead of the rows, and each cut moves
    to the end of the group it falls in (the parts then differ from the sizes asked by
    less than a group). Warned once, with the count of repeated rows.

    Args:
        path: the file, named in the warning.
        values: `(N, D)` the table's rows.
        seed: `dataset.split_seed`.
        n_test: the test rows asked for.
        n_val: the validation rows asked for.

    Returns:
        `{"test", "val", "train"}` -> row indices.
    """
    n = len(values)
    order = np.random.default_rng(seed).permutation(n)
    _, inverse, counts = np.unique(values, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if counts.max() > 1:
        group = inverse[order]
        first = np.full(len(counts), n)
        np.minimum.at(first, group, np.arange(n))
        order = order[np.argsort(first[group], kind="stable")]  # each group together
        group = inverse[order]
        ends = np.flatnonzero(np.diff(group) != 0) + 1  # where a group ends

        def cut(k: int) -> int:
            return 0 if k <= 0 else int(ends[ends >= k][0]) if (ends >= k).any() else n

        test_end = cut(n_test)
        val_end = max(cut(test_end + n_val), test_end) if n_val > 0 else test_end
        copies, groups = int(n - len(counts)), int((counts > 1).sum())
        _warn(
            f"dataset.path={path}: {copies} of {n} rows repeat other rows ({groups} "
            "groups of identical rows); each group is kept whole in one of the test, "
            "validation and training parts, so no row is scored against a copy of itself"
        )
    else:
        test_end, val_end = n_test, n_test + n_val
    return {"test": order[:test_end], "val": order[test_end:val_end], "train": order[val_end:]}
