r"""How samples are written for each kind of data: image grids or CSV tables.

`sample_format` picks the writer from the data's
`DataSpec`, so the trainer and `glow-sample` draw
samples the same way for every kind of data and leave the file format here.

- images: `make_grid` grids, PNG (or any format Pillow writes) and TensorBoard images;
- vectors: CSV in the data's own units with the column names (one row per sample;
  for time-series windows one row per window, `<column>[t]`), and TensorBoard
  histograms of the first columns. For log-returns, `TableSamples.prices`
  turns each window into a price path from a start price:
  $p_t = p_0 \exp(\sum_{s \le t} r_s)$.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glow_train.data.spec import DataSpec

__all__ = [
    "ImageSamples",
    "TableSamples",
    "sample_format",
    "WRITERS",
    "image_format",
    "writable_extensions",
    "output_names",
    "prices_path",
    "temperature_column",
]

HISTOGRAM_COLUMNS = 8  # TensorBoard histograms of at most this many columns


class ImageSamples:
    """Grids of images (`(n, C, H, W)` floats in `[0, 1]`)."""

    suffix = ".png"

    def __init__(self, spec: DataSpec, padding: int = 2, nrow: int | None = None):
        self.padding = padding
        self.nrow = nrow

    def grid(self, samples: Tensor, nrow: int | None = None) -> Tensor:
        """One image grid of `samples` (`nrow` per row: given, this writer's, or a square)."""
        from torchvision.utils import make_grid

        nrow = nrow or self.nrow or math.ceil(math.sqrt(len(samples)))
        return make_grid(samples, nrow=nrow, padding=self.padding)

    def tensorboard(self, monitor: Any, samples: dict[float, Tensor], step: int) -> None:
        """One grid per temperature to TensorBoard."""
        for t, x in samples.items():
            monitor.image(f"samples/T={t:g}", self.grid(x), step)

    def write(self, path: Path, samples: Tensor, kind: str = "PNG") -> None:
        """The grid of `samples` to `path` (`kind`: PNG, JPEG, ...)."""
        from torchvision.utils import save_image

        save_image(self.grid(samples), path, format=kind)


class TableSamples:
    """Rows of numbers (`(n, D)`) with the data's column names."""

    suffix = ".csv"

    def __init__(self, spec: DataSpec, **_: Any):
        self.spec = spec
        self.columns = list(spec.columns) or [str(i) for i in range(spec.num_dims)]

    def tensorboard(self, monitor: Any, samples: dict[float, Tensor], step: int) -> None:
        """Histograms of the first columns, per temperature, to TensorBoard."""
        for t, x in samples.items():
            for j, name in enumerate(self.columns[:HISTOGRAM_COLUMNS]):
                monitor.histogram(f"samples/T={t:g}/{name}", x[:, j], step)

    def write(
        self, path: Path, samples: Tensor, leading: list[tuple[str, Any]] = (), append=False
    ) -> None:
        """CSV of `samples`; `leading` adds constant columns first (e.g. the
        temperature); `append` adds rows to a file this method started."""
        _write_rows(path, self.columns, samples, leading, append)

    def prices(self, samples: Tensor, start_price: float) -> tuple[list[str], Tensor]:
        """Price paths `(n, (W+1)·c)` from log-return windows, starting at `start_price`."""
        spec = self.spec
        if spec.transform != "log_return" or spec.window is None:
            raise ValueError("price paths need a model of log-return windows")
        c = len(spec.series)
        returns = samples.double().view(len(samples), spec.window, c)
        log_paths = torch.cat(
            [torch.zeros(len(samples), 1, c, dtype=torch.float64), returns.cumsum(dim=1)], dim=1
        )
        paths = start_price * torch.exp(log_paths)
        names = [f"{name}[{t}]" for t in range(spec.window + 1) for name in spec.series]
        return names, paths.reshape(len(samples), -1)

    def write_prices(
        self,
        path: Path,
        samples: Tensor,
        start_price: float,
        leading: list[tuple[str, Any]] = (),
        append: bool = False,
    ) -> None:
        """`prices` as CSV, like `write`."""
        names, paths = self.prices(samples, start_price)
        _write_rows(path, names, paths, leading, append)


def _write_rows(
    path: Path, names: list[str], rows: Tensor, leading: list[tuple[str, Any]], append: bool
) -> None:
    with open(path, "a" if append else "w", newline="") as f:
        writer = csv.writer(f)
        if not append:
            writer.writerow([name for name, _ in leading] + names)
        prefix = [value for _, value in leading]
        for row in rows.double().tolist():
            writer.writerow(prefix + [repr(v) for v in row])


def _writable_extensions() -> dict[str, str]:
    """Extension -> Pillow format name, for the formats Pillow can write."""
    from PIL import Image

    Image.init()
    return {ext: kind for ext, kind in Image.registered_extensions().items() if kind in Image.SAVE}


def image_format(path: Path) -> str:
    """The Pillow format a file name asks for (`PNG` for `.png`, `JPEG` for `.jpg`)."""
    return _writable_extensions()[path.suffix.lower()]


def writable_extensions() -> list[str]:
    """The image file extensions Pillow can write (`.png`, `.jpg`, `.webp`, ...)."""
    return list(_writable_extensions())


def output_names(temperatures: list[float], layout: str, tag: str = "") -> list[str]:
    """The label of each file of samples: `T0.7` per temperature (`layout="grids"`)
    or one `rows_T0-0.7-1`, followed by `tag` (the class: `_y3`, `_yall`)."""
    if layout == "grids":
        return [f"T{t:g}{tag}" for t in temperatures]
    return ["rows_T" + "-".join(f"{t:g}" for t in temperatures) + tag]


def prices_path(path: Path) -> Path:
    """Where the price paths of the samples in the table `path` go (`start_price`)."""
    return path.with_name(f"{path.stem}_prices.csv")


def temperature_column(columns: list[str]) -> str:
    """The name of the temperature column of `layout=rows` tables: `temperature`,
    with leading underscores until it is not one of the data's `columns`."""
    name = "temperature"
    while name in columns:
        name = "_" + name
    return name


#: the kind of data (`DataSpec.kind`) -> the class that writes its samples
WRITERS: dict[str, type] = {"image": ImageSamples, "vector": TableSamples}


def sample_format(spec: DataSpec, **options: Any) -> ImageSamples | TableSamples:
    """The writer of samples of data described by `spec`."""
    return WRITERS[spec.kind](spec, **options)
