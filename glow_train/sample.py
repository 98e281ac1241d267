"""Sampling: temperature-scaled latents decoded to image grids.

``sample_images`` and ``sample_grid`` are the library functions the trainer uses;
:func:`sample` is what ``glow-sample`` calls: checkpoint in, PNG files out.
Latents are drawn from the learned priors with their standard deviations
multiplied by the temperature (Kingma & Dhariwal 2018, section 5: ``T = 0.7``
trades diversity for fidelity; ``T = 0`` decodes the priors' means).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

from glow_train.checkpoint import load_model, write_atomic
from glow_train.distributed import resolve_device
from glow_train.errors import CheckpointError, ConfigError, require_int
from glow_train.likelihood import postprocess
from glow_train.model import Glow

__all__ = [
    "sample_images",
    "sample_grid",
    "sample_rows",
    "sample",
    "output_paths",
    "checkpoint_n_bits",
    "LAYOUTS",
]

LAYOUTS = ("grids", "rows")


@torch.no_grad()
def sample_images(
    model: Glow,
    n: int,
    temperature: float,
    n_bits: int,
    seed: int = 0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """``n`` samples as floats in ``[0, 1]`` on the ``n_bits`` grid, ``(n, C, H, W)`` on CPU.

    Drawn in batches of ``batch_size`` from one generator seeded with ``seed`` on the
    model's device: the same seed and batch size give the same images on the same
    device (each batch draws its latents level by level, so another batch size
    consumes the random stream in another order and gives other images).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    device = next(model.parameters()).device
    model.eval()
    gen = torch.Generator(device).manual_seed(seed)
    batch_size = batch_size or n
    chunks = []
    for start in range(0, n, batch_size):
        x = model.sample(min(batch_size, n - start), temperature=temperature, generator=gen)
        chunks.append(postprocess(x, n_bits).cpu())
    return torch.cat(chunks)


def sample_grid(
    model: Glow,
    n: int,
    temperatures: list[float],
    n_bits: int,
    seed: int = 0,
    nrow: int = 8,
    padding: int = 2,
    batch_size: int | None = None,
) -> dict[float, torch.Tensor]:
    """One ``make_grid`` image ``(C, H', W')`` per temperature, each from the same seed."""
    return {
        float(t): make_grid(
            sample_images(model, n, float(t), n_bits, seed, batch_size), nrow=nrow, padding=padding
        )
        for t in temperatures
    }


def sample_rows(
    model: Glow,
    n: int,
    temperatures: list[float],
    n_bits: int,
    seed: int = 0,
    padding: int = 2,
    batch_size: int | None = None,
) -> torch.Tensor:
    """One grid ``(C, H', W')`` with a row of ``n`` samples per temperature.

    Every row uses the same seed, hence the same standard-normal draws scaled by its
    temperature: column ``j`` shows one latent at increasing (or decreasing) temperatures.
    """
    images = [sample_images(model, n, float(t), n_bits, seed, batch_size) for t in temperatures]
    return make_grid(torch.cat(images), nrow=n, padding=padding)


# ------------------------------------------------------------------ checkpoints and files


def checkpoint_n_bits(state: dict[str, Any], path: str | os.PathLike) -> int:
    """The bit depth the checkpoint's model was trained on (``config.dataset.n_bits``)."""
    try:
        return int(state["config"]["dataset"]["n_bits"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has no config.dataset.n_bits; not a glow-train run") from err


def _temperatures(value: float | Sequence[float]) -> list[float]:
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if not values:
        raise ConfigError("temperature must name at least one value, e.g. temperature=0.7")
    out = []
    for t in values:
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"temperature must be a number >= 0, got {t!r}")
        out.append(float(t))
    return out


def _label(t: float) -> str:
    return f"T{t:g}"


def output_paths(
    ckpt: Path, temperatures: list[float], layout: str, out: str | os.PathLike | None
) -> list[Path]:
    """Where :func:`sample` writes: one path per grid, each labelled with its temperature(s).

    ``out`` ending in ``.png`` is the file itself (``_T<t>`` is added before the suffix when
    there are several grids); anything else is a folder; ``None`` is
    ``<checkpoint folder>/samples/``. File names in a folder are ``<ckpt stem>_T<t>.png``
    (``_rows_T0-0.7-1.png`` for ``layout=rows``).
    """
    labels = (
        [_label(t) for t in temperatures]
        if layout == "grids"
        else ["rows_T" + "-".join(f"{t:g}" for t in temperatures)]
    )
    if out is not None and str(out).lower().endswith(".png"):
        out = Path(out)
        if len(labels) == 1:
            return [out]
        return [out.with_name(f"{out.stem}_{label}{out.suffix}") for label in labels]
    folder = Path(out) if out is not None else ckpt.parent / "samples"
    return [folder / f"{ckpt.stem}_{label}.png" for label in labels]


def sample(
    ckpt: str | os.PathLike,
    temperature: float | Sequence[float] = 0.7,
    *,
    n: int = 64,
    nrow: int | None = None,
    padding: int = 2,
    layout: str = "grids",
    seed: int = 0,
    batch_size: int | None = None,
    out: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    ema: bool = True,
) -> list[Path]:
    """Decode samples of a checkpoint's model and write them as PNG grids.

    Args:
        ckpt: a checkpoint written by ``glow-train``.
        temperature: one temperature or several (one grid, or one row, each).
        n: samples per grid (``layout="grids"``) or per row (``layout="rows"``).
        nrow: images per grid row (``None``: ``ceil(sqrt(n))``); unused for rows.
        padding: pixels between images.
        layout: ``"grids"`` (a file per temperature) or ``"rows"`` (one file).
        seed: seeds the latents; every temperature uses the same draws.
        batch_size: images decoded at once (``None``: all ``n``); part of what the
            images depend on, with the seed and the device.
        out: see :func:`output_paths`.
        device: where the model runs.
        ema: use the EMA weights when the checkpoint has them.

    Returns:
        The written files. They are written only after every grid was drawn, each
        atomically, so a failure leaves no partial file.

    Raises:
        ConfigError: an invalid option. CheckpointError: an unusable checkpoint.
    """
    temperatures = _temperatures(temperature)
    n = require_int("n", n, 1)
    nrow = require_int("nrow", nrow, 1, allow_none=True) or math.ceil(math.sqrt(n))
    padding = require_int("padding", padding, 0)
    seed = require_int("seed", seed, 0)
    batch_size = require_int("batch_size", batch_size, 1, allow_none=True)
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "grids":
        temperatures = list(dict.fromkeys(temperatures))  # one file per distinct value
    ckpt = Path(ckpt)
    paths = output_paths(ckpt, temperatures, layout, out)
    if any(p.resolve() == ckpt.resolve() for p in paths):
        raise ConfigError(f"out={out} would overwrite the checkpoint {ckpt}")
    model, info = load_model(ckpt, ema=ema, device=resolve_device(device))
    n_bits = checkpoint_n_bits(info, ckpt)
    if layout == "grids":
        grids = list(
            sample_grid(model, n, temperatures, n_bits, seed, nrow, padding, batch_size).values()
        )
    else:
        grids = [sample_rows(model, n, temperatures, n_bits, seed, padding, batch_size)]
    for path, grid in zip(paths, grids, strict=True):
        write_atomic(path, lambda tmp, grid=grid: save_image(grid, tmp, format="png"))
    return paths
