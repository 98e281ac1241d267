"""How samples are written for each kind of data: image grids or CSV tables.

:func:`sample_format` picks the writer from the data's
:class:`~glow_train.data.spec.DataSpec`, so the trainer and ``glow-sample`` draw
samples the same way for every kind of data and leave the file format here.

- images: ``make_grid`` grids, PNG (or any format Pillow writes) and TensorBoard images;
- vectors: CSV in the data's own units with the column names (one row per sample;
  for time-series windows one row per window, ``<column>[t]``), and TensorBoard
  histograms of the first columns. For log-returns, :meth:`TableSamples.prices`
  turns each window into a price path from a start price:
  :math:`p_t = p_0 \\exp(\\sum_{s \\le t} r_s)`.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glow_train.data.spec import DataSpec
from glow_train.errors import ConfigError

__all__ = [
    "ImageSamples",
    "TableSamples",
    "sample_format",
    "WRITERS",
    "table_paths",
    "output_paths",
    "image_format",
]

HISTOGRAM_COLUMNS = 8  # TensorBoard histograms of at most this many columns


class ImageSamples:
    """Grids of images (``(n, C, H, W)`` floats in ``[0, 1]``)."""

    suffix = ".png"

    def __init__(self, spec: DataSpec, padding: int = 2, nrow: int | None = None):
        self.padding = padding
        self.nrow = nrow

    def grid(self, samples: Tensor, nrow: int | None = None) -> Tensor:
        from torchvision.utils import make_grid

        nrow = nrow or self.nrow or math.ceil(math.sqrt(len(samples)))
        return make_grid(samples, nrow=nrow, padding=self.padding)

    def tensorboard(self, monitor: Any, samples: dict[float, Tensor], step: int) -> None:
        for t, x in samples.items():
            monitor.image(f"samples/T={t:g}", self.grid(x), step)

    def write(self, path: Path, samples: Tensor, kind: str = "PNG") -> None:
        from torchvision.utils import save_image

        save_image(self.grid(samples), path, format=kind)


class TableSamples:
    """Rows of numbers (``(n, D)``) with the data's column names."""

    suffix = ".csv"

    def __init__(self, spec: DataSpec, **_: Any):
        self.spec = spec
        self.columns = list(spec.columns) or [str(i) for i in range(spec.num_dims)]

    def tensorboard(self, monitor: Any, samples: dict[float, Tensor], step: int) -> None:
        for t, x in samples.items():
            for j, name in enumerate(self.columns[:HISTOGRAM_COLUMNS]):
                monitor.histogram(f"samples/T={t:g}/{name}", x[:, j], step)

    def write(
        self, path: Path, samples: Tensor, leading: list[tuple[str, Any]] = (), append=False
    ) -> None:
        """CSV of ``samples``; ``leading`` adds constant columns first (e.g. the
        temperature); ``append`` adds rows to a file this method started."""
        _write_rows(path, self.columns, samples, leading, append)

    def prices(self, samples: Tensor, start_price: float) -> tuple[list[str], Tensor]:
        """Price paths ``(n, (W+1)·c)`` from log-return windows, starting at ``start_price``."""
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
        """:meth:`prices` as CSV, like :meth:`write`."""
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


def table_paths(ckpt: Path, labels: list[str], out: str | os.PathLike | None) -> list[Path]:
    """Where samples of a vector model go: ``out`` a ``.csv`` file or a folder (see
    :func:`output_paths`)."""
    if out is not None and not Path(out).is_dir():
        out = Path(out)
        if out.suffix.lower() == ".csv":
            if len(labels) == 1:
                return [out]
            return [out.with_name(f"{out.stem}_{label}.csv") for label in labels]
        if out.is_file() or out.suffix:
            raise ConfigError(
                f"out={out}: samples of a vector model are CSV; name a .csv file or a folder"
            )
    folder = Path(out) if out is not None else ckpt.parent / "samples"
    return [folder / f"{ckpt.stem}_{label}.csv" for label in labels]


def _writable_extensions() -> dict[str, str]:
    """Extension -> Pillow format name, for the formats Pillow can write."""
    from PIL import Image

    Image.init()
    return {ext: kind for ext, kind in Image.registered_extensions().items() if kind in Image.SAVE}


def image_format(path: Path) -> str:
    """The Pillow format a file name asks for (``PNG`` for ``.png``, ``JPEG`` for ``.jpg``)."""
    return _writable_extensions()[path.suffix.lower()]


def _label(t: float) -> str:
    return f"T{t:g}"


def output_paths(
    ckpt: Path,
    temperatures: list[float],
    layout: str,
    out: str | os.PathLike | None,
    suffix: str = ".png",
    tag: str = "",
) -> list[Path]:
    """Where :func:`sample` writes: one path per grid, each labelled with its temperature(s).

    ``out`` ending in an image extension Pillow writes (``.png``, ``.jpg``, ``.webp``, ...)
    is the file itself, written in that format (``_T<t>`` is added before the suffix
    when there are several grids); an existing folder, or a name without an
    extension, is a folder; ``None`` is ``<checkpoint folder>/samples/``. File names
    in a folder are ``<ckpt stem>_T<t>.png`` (``_rows_T0-0.7-1.png`` for ``layout=rows``),
    followed by ``tag`` (the class, ``_y3`` or ``_yall``).
    Samples of vector data (``suffix=".csv"``) are CSV files, named the same way.

    Raises:
        ConfigError: an extension that is no image format, or an existing file
            that is not an image.
    """
    labels = (
        [_label(t) + tag for t in temperatures]
        if layout == "grids"
        else ["rows_T" + "-".join(f"{t:g}" for t in temperatures) + tag]
    )
    if suffix == ".csv":
        return table_paths(ckpt, labels, out)
    if out is not None and not Path(out).is_dir():
        out = Path(out)
        if out.suffix.lower() in _writable_extensions():
            if len(labels) == 1:
                return [out]
            return [out.with_name(f"{out.stem}_{label}{out.suffix}") for label in labels]
        if out.is_file():
            raise ConfigError(
                f"out={out} is an existing file; pass a folder or an image file name (.png, .jpg)"
            )
        if out.suffix:
            raise ConfigError(
                f"out={out}: {out.suffix!r} is not an image format Pillow writes; name a "
                ".png, .jpg or .webp file, or a folder"
            )
    folder = Path(out) if out is not None else ckpt.parent / "samples"
    return [folder / f"{ckpt.stem}_{label}.png" for label in labels]


#: the kind of data (:attr:`DataSpec.kind`) -> the class that writes its samples
WRITERS: dict[str, type] = {"image": ImageSamples, "vector": TableSamples}


def sample_format(spec: DataSpec, **options: Any) -> ImageSamples | TableSamples:
    """The writer of samples of data described by ``spec``."""
    return WRITERS[spec.kind](spec, **options)
