"""Reading the numeric columns of a CSV file, with one-line errors for bad input.

`read_columns` returns the chosen columns (or every numeric one) as float64.
A header is detected (`auto`: a first row with a field that is neither a number
nor a missing value) or forced; without one the columns are named `0`, `1`, ...
Errors name the file, the column and the line: a non-numeric column that was asked
for, missing values (counted and located, unless `dropna`), infinite values,
ragged rows, duplicate or unknown column names.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from pathlib import Path

import numpy as np

from glow_train.errors import ConfigError, DataError

__all__ = ["read_columns", "header_choice", "HEADERS", "MISSING"]

HEADERS = ("auto", "true", "false")
#: fields read as missing values (compared in lower case, stripped)
MISSING = frozenset({"", "na", "nan", "n/a", "null", "none", "?"})
SHOWN = 5  # lines named per column in an error
#: the largest magnitude accepted: the model computes in float32
LARGEST = float(np.finfo(np.float32).max)


def read_columns(
    path: Path, columns: list[str] | None, header: str, delimiter: str, dropna: bool
) -> tuple[list[str], np.ndarray]:
    """`(names, values (N, c) float64)` of `columns` (`None`: the numeric ones)."""
    rows, lines = _read_rows(path, delimiter)
    names, rows, lines = _header(rows, lines, header)
    try:
        names, values = _parse(path, names, rows, lines, columns)
    except DataError as err:
        raise DataError(f"{err}{_delimiter_hint(rows, delimiter)}") from None
    return names, _missing(path, names, values, lines, dropna)


#: fields that look like numbers written for reading: "1,000", "1 000.5", "3,5", "1'000"
WRITTEN = re.compile(r"[+-]?\d[\d,.' ]*")


def _delimiter_hint(rows: list[list[str]], delimiter: str) -> str:
    """When every line is one field holding another usual delimiter: which to set."""
    if any(len(row) != 1 for row in rows[:20]):
        return ""
    for other in (";", "|"):
        if other != delimiter and all(other in row[0] for row in rows[:20]):
            return (
                f"; its lines look {other}-separated: set dataset.delimiter={other!r} "
                f"(the delimiter now is {delimiter!r})"
            )
    return ""


def _written_number(name: str, bad: tuple[int, str]) -> None:
    """Warn (once) when a column left out as not numeric holds numbers as written for
    reading (thousands separators, a decimal comma): it was probably meant to count."""
    line, field = bad
    if WRITTEN.fullmatch(field):
        warnings.warn(
            f"column {name!r} is left out: {field!r} (line {line}) is not a number as "
            "written (thousands separators or a decimal comma?); write plain numbers such "
            "as 1000.5 to use it",
            stacklevel=2,
        )


def header_choice(value: object) -> str | None:
    """`dataset.header` as `auto`, `true` or `false` (`None` if it is none of
    them); the command line's `true`/`false` arrive as booleans."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    return text if text in HEADERS else None


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _read_rows(path: Path, delimiter: str) -> tuple[list[list[str]], list[int]]:
    """The non-blank records of the file and the file line each starts on (a quoted
    field may span lines; blank lines are skipped but counted)."""
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise DataError(
            f"dataset.path={path} does not exist or is not a file{where}; pass "
            "dataset.path=<the CSV file>"
        )
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            start = 1
            for row in reader:
                if any(field.strip() for field in row):
                    rows.append([field.strip() for field in row])
                    lines.append(start)
                start = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"dataset.path={path} cannot be read as CSV: {err}") from err
    if not rows:
        raise DataError(f"dataset.path={path} is empty")
    return rows, lines


def _header(
    rows: list[list[str]], lines: list[int], header: str
) -> tuple[list[str], list[list[str]], list[int]]:
    """`(column names, data rows, the file line of each data row)`."""
    first = rows[0]
    if header == "auto":
        has_header = any(f.lower() not in MISSING and not _is_number(f) for f in first)
    else:
        has_header = header == "true"
    if has_header:
        return first, rows[1:], lines[1:]
    return [str(i) for i in range(len(first))], rows, lines


def _parse(
    path: Path, names: list[str], rows: list[list[str]], lines: list[int], wanted: list[str] | None
) -> tuple[list[str], np.ndarray]:
    """The chosen (or all numeric) columns as float64 `(N, c)`, NaN where missing."""
    width = len(names)
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataError(
                f"dataset.path={path}: line {lines[i]} has {len(row)} fields, the header "
                f"{width}; fix the file"
            )
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"dataset.path={path}: column {dup!r} appears twice in the header")

    def bad_field(j: int) -> tuple[int, str] | None:
        for i, row in enumerate(rows):
            f = row[j]
            if f.lower() not in MISSING and not _is_number(f):
                return lines[i], f
        return None

    if wanted is None:
        chosen = [j for j in range(width) if bad_field(j) is None]
        for j in range(width):
            if j not in chosen:
                _written_number(names[j], bad_field(j))
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
                written = WRITTEN.fullmatch(bad[1]) is not None
                why = " (thousands separators or a decimal comma?)" if written else ""
                fix = "write plain numbers such as 1000.5, or " if written else ""
                raise DataError(
                    f"dataset.path={path}: column {names[j]!r} is not numeric (line {bad[0]}: "
                    f"{bad[1]!r}){why}; {fix}leave it out of dataset.columns"
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
            f"(line {lines[i]}); remove it or mark it missing"
        )
    huge = np.abs(np.nan_to_num(values)) > LARGEST
    if huge.any():
        i, j = np.argwhere(huge)[0]
        raise DataError(
            f"dataset.path={path}: column {names[chosen[j]]!r} has the value {values[i, j]:g} "
            f"(line {lines[i]}), beyond float32's range (|value| <= {LARGEST:.2g}), which the "
            "model computes in; rescale the column, fix the value or mark it missing"
        )
    return [names[j] for j in chosen], values


def _missing(path: Path, columns: list[str], values: np.ndarray, lines: list[int], dropna: bool):
    missing = np.isnan(values)
    if not missing.any():
        return values
    if dropna:
        return values[~missing.any(axis=1)]
    where = []
    for j, name in enumerate(columns):
        at = [lines[i] for i in np.flatnonzero(missing[:, j])]
        if at:
            shown = ", ".join(map(str, at[:SHOWN])) + (", ..." if len(at) > SHOWN else "")
            where.append(f"{name!r} ({len(at)}: line {shown})")
    raise DataError(
        f"dataset.path={path}: {int(missing.sum())} missing values in column {'; '.join(where)}; "
        "set dataset.dropna=true to drop those rows"
    )
