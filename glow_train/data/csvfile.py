"""Reading the numeric columns of a CSV file, with one-line errors for bad input.

:func:`read_columns` returns the chosen columns (or every numeric one) as float64.
A header is detected (``auto``: a first row with a field that is neither a number
nor a missing value) or forced; without one the columns are named ``0``, ``1``, ...
Errors name the file, the column and the line: a non-numeric column that was asked
for, missing values (counted and located, unless ``dropna``), infinite values,
ragged rows, duplicate or unknown column names.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from glow_train.errors import ConfigError, DataError

__all__ = ["read_columns", "HEADERS", "MISSING"]

HEADERS = ("auto", "true", "false")
#: fields read as missing values (compared in lower case, stripped)
MISSING = frozenset({"", "na", "nan", "n/a", "null", "none", "?"})
SHOWN = 5  # lines named per column in an error


def read_columns(
    path: Path, columns: list[str] | None, header: str, delimiter: str, dropna: bool
) -> tuple[list[str], np.ndarray]:
    """``(names, values (N, c) float64)`` of ``columns`` (``None``: the numeric ones)."""
    rows = _read_rows(path, delimiter)
    names, rows, line0 = _header(rows, header)
    names, values = _parse(path, names, rows, line0, columns)
    return names, _missing(path, names, values, line0, dropna)


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _read_rows(path: Path, delimiter: str) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"dataset.path={path} does not exist or is not a file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [
                [field.strip() for field in row]
                for row in csv.reader(f, delimiter=delimiter)
                if any(field.strip() for field in row)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"dataset.path={path} cannot be read as CSV: {err}") from err
    if not rows:
        raise DataError(f"dataset.path={path} is empty")
    return rows


def _header(rows: list[list[str]], header: str) -> tuple[list[str], list[list[str]], int]:
    """``(column names, data rows, file line of the first data row)``."""
    first = rows[0]
    if header == "auto":
        has_header = any(f.lower() not in MISSING and not _is_number(f) for f in first)
    else:
        has_header = header == "true"
    if has_header:
        return first, rows[1:], 2
    return [str(i) for i in range(len(first))], rows, 1


def _parse(
    path: Path, names: list[str], rows: list[list[str]], line0: int, wanted: list[str] | None
) -> tuple[list[str], np.ndarray]:
    """The chosen (or all numeric) columns as float64 ``(N, c)``, NaN where missing."""
    width = len(names)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataError(
                f"dataset.path={path}: line {line0 + i} has {len(row)} fields, the header "
                f"{width}; fix the file"
            )
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"dataset.path={path}: column {dup!r} appears twice in the header")

    def bad_field(j: int) -> tuple[int, str] | None:
        for i, row in enumerate(rows):
            f = row[j]
            if f.lower() not in MISSING and not _is_number(f):
                return line0 + i, f
        return None

    if wanted is None:
        chosen = [j for j in range(width) if bad_field(j) is None]
        if not chosen:
            raise DataError(f"dataset.path={path} has no numeric column")
    else:
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise ConfigError(
                f"dataset.columns: no column {unknown[0]!r} in {path}; it has {', '.join(names)}"
            )
        chosen = [names.index(c) for c in wanted]
        for j in chosen:
            bad = bad_field(j)
            if bad is not None:
                raise DataError(
                    f"dataset.path={path}: column {names[j]!r} is not numeric (line {bad[0]}: "
                    f"{bad[1]!r}); leave it out of dataset.columns"
                )
    values = np.array(
        [
            [math.nan if row[j].lower() in MISSING else float(row[j]) for j in chosen]
            for row in rows
        ],
        dtype=np.float64,
    ).reshape(len(rows), len(chosen))
    infinite = np.isinf(values)
    if infinite.any():
        i, j = np.argwhere(infinite)[0]
        raise DataError(
            f"dataset.path={path}: column {names[chosen[j]]!r} has an infinite value "
            f"(line {line0 + i}); remove it or mark it missing"
        )
    return [names[j] for j in chosen], values


def _missing(path: Path, columns: list[str], values: np.ndarray, line0: int, dropna: bool):
    missing = np.isnan(values)
    if not missing.any():
        return values
    if dropna:
        return values[~missing.any(axis=1)]
    where = []
    for j, name in enumerate(columns):
        lines = (np.flatnonzero(missing[:, j]) + line0).tolist()
        if lines:
            shown = ", ".join(map(str, lines[:SHOWN])) + (", ..." if len(lines) > SHOWN else "")
            where.append(f"{name!r} ({len(lines)}: line {shown})")
    raise DataError(
        f"dataset.path={path}: {int(missing.sum())} missing values in column {'; '.join(where)}; "
        "set dataset.dropna=true to drop those rows"
    )
