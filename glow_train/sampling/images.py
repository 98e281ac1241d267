"""Plain samples and class grids: temperature-scaled latents decoded to image grids
(CSV tables for vectors).

`sample_images` and `sample_grid` are the library functions the trainer uses;
`sample` is `glow-sample`'s `mode=sample`: checkpoint in, PNG files out.
Latents are drawn from the learned priors with their standard deviations
multiplied by the temperature (Kingma & Dhariwal 2018, section 5: `T = 0.7`
trades diversity for fidelity; `T = 0` decodes the priors' means). The
objective's dequantiser turns model output back into images on the data's grid.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import torch

from glow_train.config import LAYOUTS, SampleConfig, packaged_defaults
from glow_train.errors import ConfigError, show
from glow_train.io.outputs import claim_outputs, sample_targets, write_atomic
from glow_train.likelihood.loading import load, resolve_checkpoint
from glow_train.likelihood.objective import Objective
from glow_train.modes import command_mode
from glow_train.sampling.formats import (
    TableSamples,
    image_format,
    output_names,
    prices_path,
    sample_format,
    temperature_column,
    writable_extensions,
)

__all__ = [
    "sample_images",
    "sample_grid",
    "sample_rows",
    "sample",
    "class_choice",
    "class_index",
    "LAYOUTS",
]


@torch.no_grad()
def sample_images(
    objective: Objective,
    n: int,
    temperature: float,
    seed: int,
    batch_size: int | None = None,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """`n` samples as data, `(n, C, H, W)` floats in `[0, 1]` on the data's grid, on CPU.

    Drawn in batches of `batch_size` (`None`: all at once) from one generator
    seeded with `seed` on the model's device: the same seed and batch size give
    the same images on the same device (each batch draws its latents level by
    level, so another batch size consumes the random stream in another order and
    gives other images). `y`: `(n,)` class labels for a class-conditional model
    (`None`: the classes in turn, `i mod num_classes`).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    device = next(objective.parameters()).device
    objective.eval()
    if y is None and objective.flow.num_classes > 0:
        y = torch.arange(n) % objective.flow.num_classes
    gen = torch.Generator(device).manual_seed(seed)
    batch_size = batch_size or n
    chunks = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        labels = None if y is None else y[start:stop].to(device)
        chunks.append(objective.sample(stop - start, temperature, gen, labels).cpu())
    return torch.cat(chunks)


def sample_grid(
    objective: Objective,
    n: int,
    temperatures: list[float],
    seed: int,
    nrow: int,
    padding: int,
    batch_size: int | None = None,
    y: torch.Tensor | None = None,
) -> dict[float, torch.Tensor]:
    """One `make_grid` image `(C, H', W')` per temperature, each from the same seed
    (`y`: the class of each image, as in `sample_images`)."""
    from torchvision.utils import make_grid  # torchvision loads in about a second: on use

    return {
        float(t): make_grid(
            sample_images(objective, n, float(t), seed, batch_size, y), nrow=nrow, padding=padding
        )
        for t in temperatures
    }


def sample_rows(
    objective: Objective,
    n: int,
    temperatures: list[float],
    seed: int,
    padding: int,
    batch_size: int | None = None,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """One grid `(C, H', W')` with a row of `n` samples per temperature.

    Every row uses the same seed, hence the same standard-normal draws scaled by its
    temperature: column `j` shows one latent at increasing (or decreasing) temperatures.
    """
    from torchvision.utils import make_grid

    images = [sample_images(objective, n, float(t), seed, batch_size, y) for t in temperatures]
    return make_grid(torch.cat(images), nrow=n, padding=padding)


# ------------------------------------------------------------------ checkpoints and files


def class_index(y: int | str, num_classes: int) -> int | None:
    """`y` as one of `num_classes` class indices (`3` or `"3"`), or `None`
    when it is not one (the caller says what it takes instead)."""
    text = str(y).strip()
    return int(text) if text.isdigit() and int(text) < num_classes else None


def class_choice(
    y: int | str | None, num_classes: int, n: int, layout: str
) -> tuple[torch.Tensor | None, str, int]:
    """`glow-sample y=`: the labels to draw, the file-name tag and the images per grid.

    `y=<class>` draws `n` images of that class (`_y<class>`); `y=all` one row of
    `n` per class in one grid (`_yall`); `None` the classes in turn (no tag).
    """
    if y is None:
        return None, "", n
    if num_classes < 1:
        raise ConfigError(
            f"y={y}: this model is not class-conditional; train one with model.conditional=true"
        )
    if str(y).lower() == "all":
        if layout != "grids":
            raise ConfigError("y=all draws one row per class; use it with layout=grids")
        return torch.arange(num_classes).repeat_interleave(n), "_yall", n * num_classes
    label = class_index(y, num_classes)
    if label is None:
        raise ConfigError(f"y must be a class in 0..{num_classes - 1} or all, got {y!r}")
    return torch.full((n,), label), f"_y{label}", n


def _write_tables(
    objective: Objective,
    writer: TableSamples,
    paths: list[Path],
    n: int,
    temperatures: list[float],
    layout: str,
    seed: int,
    batch_size: int | None,
    start_price: float | None,
) -> list[Path]:
    """Vector samples: one CSV per temperature (`rows`: one CSV, a temperature column)."""
    drawn = {t: sample_images(objective, n, t, seed, batch_size) for t in temperatures}
    jobs = (
        [(path, [(t, drawn[t])]) for path, t in zip(paths, temperatures, strict=True)]
        if layout == "grids"
        else [(paths[0], list(drawn.items()))]
    )
    column = temperature_column(writer.columns)
    written = []
    for path, parts in jobs:

        def write(tmp, parts=parts, prices=False):
            for i, (t, x) in enumerate(parts):
                leading = [] if layout == "grids" else [(column, f"{t:g}")]
                if prices:
                    writer.write_prices(tmp, x, start_price, leading, append=i > 0)
                else:
                    writer.write(tmp, x, leading, append=i > 0)

        write_atomic(path, write)
        written.append(path)
        if start_price is not None:
            price_path = prices_path(path)
            write_atomic(price_path, lambda tmp, write=write: write(tmp, prices=True))
            written.append(price_path)
    return written


#: the options of `glow-sample` that `mode=sample` uses (`glow_train.config.SampleConfig`)
USES = (
    "temperature",
    "n",
    "nrow",
    "padding",
    "layout",
    "seed",
    "batch_size",
    "y",
    "start_price",
    "out",
    "overwrite",
    "device",
    "ema",
    "precision",
)


@command_mode("sample", "mode=sample", USES, positional=("temperature",))
def sample(ckpt: str | os.PathLike, opts: SampleConfig) -> list[Path]:
    """Decode samples of a checkpoint's model and write them as PNG grids (CSV tables
    for a model of vectors): `glow-sample`'s `mode=sample`.

    Called as `sample(ckpt, temperature, **options)` (e.g. `n=16`, `layout="rows"`,
    `out=...`): every option left out takes its value in `configs/sample.yaml`, the
    defaults of `glow-sample`; or as `sample(ckpt, options=opts)` with a
    `SampleConfig`. The options, their meaning and their defaults are those of
    `glow-sample --help`: `temperature` one value or several (one grid, or one row,
    each, from the same draws); `seed`, `batch_size` and the device together fix the
    images; `y` a class-conditional model's class or `"all"` (`class_choice`);
    `start_price` also writes a model of log-returns as price paths. Options of the
    other modes are refused.

    Args:
        ckpt: a checkpoint written by `glow-train`, or a run folder (its `best.pt`,
            else `last.pt`).
        opts: the options, built by the call as above.

    Returns:
        The written files. They are written only after every grid was drawn, each
        atomically, so a failure leaves no partial file.

    Raises:
        ConfigError: an invalid option, a model with a context (it samples with
            `mode=forecast`), or a target the output policy refuses (checked before
            anything is drawn).
        CheckpointError: an unusable checkpoint.
    """
    temperatures, n, padding, seed, layout = (
        opts.temperature,
        opts.n,
        opts.padding,
        opts.seed,
        opts.layout,
    )
    batch_size, start_price, y, out = opts.batch_size, opts.start_price, opts.y, opts.out
    nrow = opts.nrow or math.ceil(math.sqrt(n))
    if opts.nrow is not None and layout == "rows":
        raise ConfigError(
            f"nrow={opts.nrow} sets the images per row of a grid; layout=rows draws one row "
            "of n images per temperature: leave nrow= out (or use layout=grids)"
        )
    if layout == "grids":
        temperatures = list(dict.fromkeys(temperatures))  # one file per distinct value
    ckpt = resolve_checkpoint(ckpt)
    loaded = load(ckpt, ema=opts.ema, device=opts.device, precision=opts.precision)
    objective, spec = loaded.objective, loaded.spec
    if getattr(objective.flow, "context_dims", 0):
        raise ConfigError(
            f"ckpt={ckpt} models each window given the values before it (dataset.context="
            f"{spec.context}), so it has no free samples; draw paths from the data's recent "
            "past with mode=forecast horizon=H"
        )
    writer = sample_format(spec, padding=padding, nrow=nrow)
    if isinstance(writer, TableSamples):  # rows of a CSV: no grid to lay out
        grid = (
            ("nrow", opts.nrow, None),
            ("padding", padding, packaged_defaults("sample", SampleConfig).padding),
        )
        for key, value, default in grid:
            if value != default:
                raise ConfigError(
                    f"{key}={value} lays out an image grid; {ckpt} models vectors, written "
                    f"as CSV rows: leave {key}= out"
                )
    if start_price is not None:
        if spec.transform != "log_return":
            raise ConfigError(
                "start_price is for models of log-return windows (dataset.transform=log_return); "
                f"{ckpt} models {spec.kind}s of the data itself"
            )
        if not math.isfinite(float(start_price)) or float(start_price) <= 0:
            raise ConfigError(f"start_price must be a number > 0, got {show(start_price)}")
    labels, tag, count = class_choice(y, objective.flow.num_classes, n, layout)
    if labels is not None and labels.numel() > n:  # y=all: a row of n per class
        nrow = n
    elif labels is None and objective.flow.num_classes and opts.nrow is None:
        nrow = objective.flow.num_classes  # the classes in turn: a column per class
    names = output_names(temperatures, layout, tag)
    extensions = [".csv"] if writer.suffix == ".csv" else writable_extensions()
    targets = sample_targets(ckpt, names, out, writer.suffix, extensions)
    if start_price is not None:
        targets += [replace(t, path=prices_path(t.path)) for t in targets]
    dataset = (loaded.info.get("config") or {}).get("dataset")
    paths = claim_outputs(targets, out, opts.overwrite, ckpt, [dataset])[: len(names)]
    if isinstance(writer, TableSamples):
        with loaded.autocast():
            return _write_tables(
                objective, writer, paths, n, temperatures, layout, seed, batch_size, start_price
            )
    with loaded.autocast():
        if layout == "grids":
            drawn = sample_grid(
                objective, count, temperatures, seed, nrow, padding, batch_size, labels
            )
            grids = list(drawn.values())
        else:
            grids = [sample_rows(objective, n, temperatures, seed, padding, batch_size, labels)]
    from torchvision.utils import save_image

    for path, grid in zip(paths, grids, strict=True):
        kind = image_format(path)
        write_atomic(path, lambda tmp, grid=grid, kind=kind: save_image(grid, tmp, format=kind))
    return paths
