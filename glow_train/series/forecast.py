r"""Scenarios from a model of $p(\text{window} \mid \text{previous } C \text{ values})$
(`glow-sample mode=forecast`).

From the `C` values of the series that end at `context_end` (default: the end of
the data), each of `n` paths draws a window of `W` values given its context, appends
it, and rolls the context forward over its own draws until `horizon` steps are
drawn: a sample of the joint distribution of the next `horizon` values under the
model's chain rule. The context is standardised with the training statistics, and the
draws are put back in the data's units. For log-returns of prices the paths are also
given as prices, starting from the last price before them:
$p_{t+h} = p_t \exp(\sum_{k \le h} r_{t+k})$.

Files: `forecast.csv` (`path, step, <column>...`: prices when the data are
log-returns of prices, else the series' own values) and `forecast.png`, a fan chart
of the first column: the recent history, then the median and the 50/90/98 % bands of
the paths at each step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from glow_train.data.spec import DataSpec
from glow_train.data.table import series_values
from glow_train.data.windows import padded_rows
from glow_train.errors import ConfigError
from glow_train.io.outputs import claim_outputs, folder_targets, write_atomic
from glow_train.likelihood.loading import load_objective

__all__ = ["forecast", "ForecastResult", "draw_paths", "draw_given", "context_model", "BANDS"]

BANDS = (0.98, 0.90, 0.50)  # central intervals of the fan chart, widest first
HISTORY = 60  # steps of history drawn before the paths (at most)


@dataclass
class ForecastResult:
    """What `forecast` drew and wrote.

    Attributes:
        paths: `(n, horizon, c)` draws in the data's units (prices for log-returns of
            prices).
        history: the values before them, `(h, c)`, in the same units.
        columns: the names of the `c` series.
        csv_path: the written `forecast.csv` (one row per path and step).
        png_path: the written fan chart, `forecast.png`.
        in_prices: whether `paths` and `history` are prices rebuilt from log-returns.
    """

    paths: np.ndarray
    history: np.ndarray
    columns: list[str]
    csv_path: Path
    png_path: Path
    in_prices: bool


def context_model(
    ckpt: str | os.PathLike, ema: bool, device: str | torch.device, needed_by: str, why: str
) -> tuple[torch.nn.Module, DataSpec, dict]:
    """A checkpoint's model of p(window | context), its data's description and its other
    entries; a model without a context is refused, naming `needed_by` (the option the
    user typed) and `why` it needs one."""
    objective, info = load_objective(ckpt, ema, device)
    flow, spec = objective.flow, DataSpec.from_dict(info["data"])
    if not getattr(flow, "context_dims", 0) or not spec.context:
        raise ConfigError(
            f"ckpt={ckpt} is a model without a context; {needed_by} needs one trained "
            f"with dataset.context=C ({why})"
        )
    return flow, spec, info


@torch.no_grad()
def draw_given(
    flow: torch.nn.Module, spec: DataSpec, context: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """One window per row of `context` `(N, C·c)` (float64, the data's units, time-major):
    the context standardised with the training statistics, a window drawn at temperature
    1, put back in the data's units: `(N, W·c)`, float64 on the CPU."""
    cd = spec.context_dims
    loc = torch.tensor(spec.loc, dtype=torch.float64)
    scale = torch.tensor(spec.scale, dtype=torch.float64)
    standard = ((context - loc[:cd]) / scale[:cd]).float()
    x = flow.sample_given(standard.to(next(flow.parameters()).device), 1.0, generator)
    return x.double().cpu() * scale[cd:] + loc[cd:]


@torch.no_grad()
def draw_paths(
    flow: torch.nn.Module,
    spec: DataSpec,
    context: np.ndarray,
    horizon: int,
    n: int,
    generator: torch.Generator,
) -> np.ndarray:
    """`n` paths `(n, horizon, c)` in the data's units from `context` `(M + C, c)`
    (the item's past: with a memory, its recursions run over each path's own draws)."""
    c, cd = max(len(spec.series), 1), spec.context_dims
    ctx = torch.from_numpy(context.reshape(1, -1)).double().repeat(n, 1)  # (n, C·c), time-major
    drawn = []
    steps = 0
    # on stderr, once the forecast has run 2 s (a short one shows nothing)
    with tqdm(total=horizon, desc="forecast", unit="step", delay=2, leave=False) as bar:
        while steps < horizon:
            x = draw_given(flow, spec, ctx, generator)  # (n, W·c) in the data's units
            drawn.append(x.view(n, -1, c))
            ctx = torch.cat([ctx, x], dim=1)[:, -cd:]
            steps += x.shape[1] // c
            bar.update(min(x.shape[1] // c, horizon - bar.n))
    return torch.cat(drawn, dim=1)[:, :horizon].numpy()


#: copies of the paths a forecast holds at its peak (drawn windows, the joined paths,
#: prices, the CSV's table), 8 bytes a value
FORECAST_COPIES = 4


def check_forecast_size(horizon: int, n: int, columns: int) -> None:
    """Refuse a forecast whose paths would not fit in this machine's memory.

    Args:
        horizon: the steps of each path.
        n: the paths.
        columns: the series' columns.

    Raises:
        ConfigError: `FORECAST_COPIES` copies of `horizon` x `n` x `columns` float64
            values exceed the memory available now (with the bytes it would need, and
            the most paths of this horizon that fit).
    """
    from glow_train.runtime.memory import available_memory

    available = available_memory()
    need = FORECAST_COPIES * 8 * horizon * n * columns
    if available is None or need <= available:
        return
    fit = available // (FORECAST_COPIES * 8 * horizon * columns)
    what = f"n={n:,} paths x horizon={horizon:,} steps x {columns} column(s)"
    raise ConfigError(
        f"{what} would need {need / 2**30:,.1f} GiB of memory, and {available / 2**30:,.1f} "
        f"GiB are available; lower n or horizon (at most n={fit:,} paths of this horizon fit)"
    )


def forecast(
    ckpt: str | os.PathLike,
    horizon: int,
    n: int,
    *,
    context_end: int | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    ema: bool = True,
) -> ForecastResult:
    """Draw `n` paths of `horizon` steps and write `forecast.csv` and `forecast.png`
    into `out` (a folder, or the CSV's name with the PNG beside it; default
    `<checkpoint folder>/forecast/`), under the output policy of
    `glow_train.io.outputs` (existing files that `out` names are kept unless
    `overwrite`).

    Args:
        ckpt: a checkpoint of a model with a context (`dataset.context=C`).
        horizon: steps to draw ahead (1 or more); a model of windows of `W` steps
            draws `W` at a time, each given the `C` values before it.
        n: number of paths (1 or more).
        context_end: the number of series values before the first drawn step (the
            context is the `C` values before it); default all of them.
        seed: seed of the draws.
        out: a folder, or the CSV's name (the PNG goes beside it); default
            `<checkpoint folder>/forecast/`.
        overwrite: replace files that `out` names.
        device: where the model runs.
        ema: use the checkpoint's EMA weights (when it has them).

    Returns:
        The paths, the history before them and the written files (`ForecastResult`).

    Raises:
        ConfigError: `horizon` or `n` below 1, a model without a context, or a
            `context_end` with fewer than `C` values before it or past the data.
    """
    if horizon < 1:
        raise ConfigError(
            f"horizon={horizon}: a forecast needs at least 1 step; set horizon=H >= 1"
        )
    if n < 1:
        raise ConfigError(f"n={n}: draw at least 1 path")
    flow, spec, info = context_model(
        ckpt,
        ema,
        device,
        "mode=forecast",
        "the density of each window given the C values before it",
    )
    check_forecast_size(horizon, n, max(len(spec.series), 1))
    columns, values, levels = series_values(info["config"]["dataset"])
    total, context = len(values), int(spec.context)
    end = total if context_end is None else int(context_end)
    past = padded_rows(values, [end - spec.past], spec.past).reshape(spec.past, -1)
    if not context <= end <= total:
        raise ConfigError(
            f"context_end={end}: the context needs the {context} values before it and the "
            f"series has {total}; choose context_end in {context}..{total}"
        )
    targets = folder_targets(Path(ckpt), "forecast", out, ["forecast.csv", "forecast.png"])
    csv_path, png_path = claim_outputs(
        targets, out, overwrite, Path(ckpt), [info["config"]["dataset"]]
    )
    generator = torch.Generator(next(flow.parameters()).device).manual_seed(int(seed))
    paths = draw_paths(flow, spec, past, horizon, n, generator)
    start = max(0, end - HISTORY)
    in_prices = levels is not None
    if in_prices:  # levels[t] is the price after values[:t]
        paths = levels[end] * np.exp(np.cumsum(paths, axis=1))
        history = levels[start : end + 1]
    else:
        history = values[start:end]
    write_atomic(csv_path, lambda tmp: _write_csv(tmp, paths, columns))
    write_atomic(png_path, lambda tmp: fan_chart(tmp, history[:, 0], paths[:, :, 0]))
    return ForecastResult(paths, history, columns, csv_path, png_path, in_prices)


def _write_csv(path: Path, paths: np.ndarray, columns: list[str]) -> None:
    n, horizon, c = paths.shape
    index = np.stack(np.meshgrid(np.arange(n), np.arange(1, horizon + 1), indexing="ij"), -1)
    table = np.concatenate([index.reshape(-1, 2), paths.reshape(-1, c)], axis=1)
    header = ",".join(["path", "step", *columns])
    fmt = ["%d", "%d"] + ["%.10g"] * c
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt=fmt)


def fan_chart(path: Path, history: np.ndarray, paths: np.ndarray, size=(800, 420)) -> None:
    """A PNG of `history` `(h,)` then, per step, the median of `paths` `(n, H)` and its
    `BANDS`, with axes (steps from the last observed value, 0; values) and a legend."""
    from PIL import Image, ImageDraw

    from glow_train.series.chart import axes, legend

    width, height = size
    box = (80, 28, width - 20, height - 50)
    steps = len(history) + paths.shape[1]
    qs = {b: np.quantile(paths, [(1 - b) / 2, (1 + b) / 2], axis=0) for b in BANDS}
    median = np.median(paths, axis=0)
    low = min(history.min(), min(q[0].min() for q in qs.values()))
    high = max(history.max(), max(q[1].max() for q in qs.values()))
    span = high - low if high > low else 1.0

    def xy(t: float, v: float) -> tuple[float, float]:
        x = box[0] + (box[2] - box[0]) * t / max(steps - 1, 1)
        return x, box[3] - (box[3] - box[1]) * (v - low) / span

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    first = len(history) - 1  # the forecast steps follow the last history point
    x_range = (-first, -first + max(steps - 1, 1))
    axes(draw, box, x_range, (low, low + span), "steps from the last observed value")
    shades = ((222, 231, 247), (189, 208, 238), (140, 172, 226))
    for band, shade in zip(BANDS, shades, strict=True):
        lo, hi = qs[band]
        upper = [xy(first + k + 1, v) for k, v in enumerate(hi)]
        lower = [xy(first + k + 1, v) for k, v in enumerate(lo)][::-1]
        if len(upper) == 1:  # one step: a thin vertical band
            upper, lower = [xy(first, history[-1])] + upper, lower + [xy(first, history[-1])]
        draw.polygon(upper + lower, fill=shade)
    draw.line([xy(t, v) for t, v in enumerate(history)], fill=(0, 0, 0), width=2)
    draw.line(
        [xy(first, history[-1])] + [xy(first + k + 1, v) for k, v in enumerate(median)],
        fill=(20, 60, 160),
        width=2,
    )
    bands = "/".join(f"{100 * b:g}" for b in BANDS)
    entries = [("history", (0, 0, 0)), ("median", (20, 60, 160))]
    legend(draw, (box[0], 6), [*entries, (f"{bands} % bands", shades[2])])
    image.save(path, format="PNG")
