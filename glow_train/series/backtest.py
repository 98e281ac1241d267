r"""Risk backtest of a series model: one-step value-at-risk and expected shortfall on the
test part (`glow-eval ckpt=... backtest=var`).

For each step $t$ of the test part, from the `C` values before it, the model's
one-step predictive distribution of the first series' next value gives, at each
level $\alpha$ (1 % and 5 %), $\mathrm{VaR}_\alpha = -q_\alpha$ and
$\mathrm{ES}_\alpha = -E[r \mid r \le q_\alpha]$ (losses), estimated from `samples`
draws (the first value of each drawn window). The exceedances are counted and
tested as `glow_train.series.risk` describes: Kupiec's unconditional coverage,
Christoffersen's independence, and Acerbi and Székely's $Z_2$ test of the expected
shortfall, its p-value simulated from each method's own forecasts.

The same table is computed for historical simulation (the empirical quantile and tail
mean of the training part's values) and, when the `arch` package is installed
(`pip install -e '.[finance]'`), for a GARCH(1,1) with Student-t innovations fitted
on the values before the test part and filtered through the test part with those
parameters. Written: `backtest.json` (the table), `backtest.csv` (one row per test
step) and `backtest.png` (the returns, each method's 1 % VaR line and the exceedances).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glow_train.data.checks import split_count
from glow_train.data.spec import DataSpec
from glow_train.data.table import series_values
from glow_train.data.windows import padded_rows
from glow_train.io.outputs import claim_outputs, folder_targets, write_atomic
from glow_train.modes import check_option
from glow_train.series.forecast import context_model, draw_given
from glow_train.series.risk import (
    LEVELS,
    christoffersen,
    coverage,
    empirical_quantile,
    kupiec,
    student_t_quantile,
    student_t_var_es,
    var_es,
)

__all__ = [  # the statistics are re-exported from glow_train.series.risk, their home
    "backtest",
    "coverage",
    "kupiec",
    "christoffersen",
    "var_es",
    "student_t_var_es",
    "LEVELS",
]


@torch.no_grad()
def model_draws(flow, spec: DataSpec, contexts: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """`(T, samples)` draws of the first series' next value given each context `(T, C·c)`."""
    generator = torch.Generator(next(flow.parameters()).device).manual_seed(seed)
    out = np.empty((len(contexts), samples))
    chunk = max(1, 65536 // samples)
    for i in range(0, len(contexts), chunk):
        ctx = torch.from_numpy(contexts[i : i + chunk]).double().repeat_interleave(samples, dim=0)
        first = draw_given(flow, spec, ctx, generator)[:, 0]  # the window's first value, column
        out[i : i + chunk] = first.view(-1, samples).numpy()
    return out


def garch_t_forecast(
    values: np.ndarray, first_test: int
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """`(mean, sd, nu)` of the one-step forecasts of `values[first_test:]` by a
    GARCH(1,1)-t fitted on `values[:first_test]` and filtered through the rest with
    those parameters; `None` when `arch` is not installed."""
    try:
        from arch import arch_model
    except ImportError:
        return None
    factor = 10.0 / values[:first_test].std()  # arch's optimiser wants a scale of 1..1000
    model = arch_model(factor * values, mean="Constant", vol="GARCH", p=1, q=1, dist="t")
    fit = model.fit(last_obs=first_test, disp="off")
    fc = fit.forecast(horizon=1, start=first_test - 1, reindex=False)
    mean = fc.mean.values[: len(values) - first_test, 0]
    sigma = np.sqrt(fc.variance.values[: len(values) - first_test, 0])
    return mean / factor, sigma / factor, float(fit.params["nu"])


def backtest(
    ckpt: str | os.PathLike,
    *,
    samples: int = 1000,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    ema: bool = True,
) -> dict[str, Any]:
    """The backtest table (also written as `backtest.json`, with `backtest.csv` and
    `backtest.png`, into `out`: a folder, or the JSON file's name with the others
    beside it; default `<checkpoint folder>/backtest/`), under the output policy of
    `glow_train.io.outputs` (existing files that `out` names are kept unless
    `overwrite`).

    Raises:
        ConfigError: a model without a context, or `samples` out of the range of
            `glow-eval`'s `backtest_samples` (at least 100 draws per step).
    """
    samples = check_option("eval", "backtest_samples", samples)
    flow, spec, info = context_model(
        ckpt,
        ema,
        device,
        "backtest=var",
        "each step's risk is forecast from the C values before it",
    )
    cfg = info["config"]["dataset"]
    names = ["backtest.json", "backtest.csv", "backtest.png"]
    targets = folder_targets(Path(ckpt), "backtest", out, names)
    json_path, csv_path, png_path = claim_outputs(targets, out, overwrite, Path(ckpt), [cfg])
    columns, values, _ = series_values(cfg)
    total, context = len(values), int(spec.context)
    first_test = total - split_count(cfg, "test_size", total)
    steps = np.arange(max(first_test, context), total)
    contexts = padded_rows(values, steps - spec.past, spec.past)
    returns = values[steps, 0]
    draws = model_draws(flow, spec, contexts, samples, seed)
    train = values[:first_test, 0]
    methods: dict[str, dict[float, tuple[np.ndarray, np.ndarray]]] = {
        "glow1d": {a: var_es(draws, a) for a in LEVELS},
        "historical": {
            a: tuple(np.full(len(steps), v) for v in var_es(train[None, :], a)) for a in LEVELS
        },
    }
    quantiles = {"glow1d": empirical_quantile(draws), "historical": empirical_quantile(train[None])}
    notes = []
    garch = garch_t_forecast(values[:, 0], int(steps[0]))
    if garch is None:
        notes.append("garch_t skipped: the arch package is not installed (pip install arch)")
    else:
        methods["garch_t"] = {a: student_t_var_es(*garch, a) for a in LEVELS}
        quantiles["garch_t"] = student_t_quantile(*garch)
    table = {
        name: [coverage(returns, *m[a], a, quantiles[name]) for a in LEVELS]
        for name, m in methods.items()
    }
    result = {
        "series": columns[0],
        "test_steps": len(steps),
        "first_test_step": int(steps[0]),
        "samples": samples,
        "methods": table,
        "notes": notes,
    }
    write_atomic(json_path, lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    write_atomic(csv_path, lambda tmp: _write_csv(tmp, steps, returns, methods))
    var = {k: v[LEVELS[0]][0] for k, v in methods.items()}
    write_atomic(png_path, lambda tmp: _plot(tmp, returns, var, LEVELS[0]))
    result["files"] = [str(json_path), str(csv_path), str(png_path)]
    return result


def _write_csv(path: Path, steps, returns, methods) -> None:
    names, cols = ["step", "return"], [steps, returns]
    for name, by_level in methods.items():
        for level, (var, es) in by_level.items():
            pct = f"{100 * level:g}"
            names += [f"{name}_var{pct}", f"{name}_es{pct}"]
            cols += [var, es]
    fmt = ["%d"] + ["%.8g"] * (len(cols) - 1)
    np.savetxt(
        path, np.column_stack(cols), delimiter=",", header=",".join(names), comments="", fmt=fmt
    )


COLOURS = {"glow1d": (20, 60, 160), "historical": (120, 120, 120), "garch_t": (200, 90, 20)}


def _plot(
    path: Path, returns: np.ndarray, var: dict[str, np.ndarray], level: float, size=(900, 420)
) -> None:
    r"""Returns (black) against the test step, each method's VaR at `level` as a line at
    $-\text{VaR}$, exceedances of the model's VaR as red dots, axes with ticks, and a
    legend in the methods' colours that names the level."""
    from PIL import Image, ImageDraw

    from glow_train.series.chart import axes, legend, text

    width, height = size
    box = (70, 40, width - 20, height - 50)
    low = min(returns.min(), *(-v.max() for v in var.values()))
    high = max(returns.max(), 0.0)
    span = high - low if high > low else 1.0

    def xy(t: float, v: float) -> tuple[float, float]:
        x = box[0] + (box[2] - box[0]) * t / max(len(returns) - 1, 1)
        return x, box[3] - (box[3] - box[1]) * (v - low) / span

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    axes(draw, box, (0, max(len(returns) - 1, 1)), (low, low + span), "test step")
    draw.line([xy(t, r) for t, r in enumerate(returns)], fill=(0, 0, 0), width=1)
    for name, v in var.items():
        draw.line(
            [xy(t, -x) for t, x in enumerate(v)], fill=COLOURS.get(name, (0, 150, 0)), width=2
        )
    for t in np.flatnonzero(returns < -var["glow1d"]):
        x, y = xy(t, returns[t])
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(220, 0, 0))
    share = f"{100 * level:g} %"
    entries = [("returns", (0, 0, 0))]
    entries += [(f"{name} -VaR {share}", COLOURS.get(name, (0, 150, 0))) for name in var]
    entries += [(f"exceedances of glow1d's VaR {share}", (220, 0, 0))]
    legend(draw, (box[0], 4), entries)
    text(
        draw,
        (box[0], 22),
        f"one-step VaR at the {share} level (a loss exceeded on {share} of steps)",
    )
    image.save(path, format="PNG")


def format_table(result: dict[str, Any]) -> str:
    """The printed table: one line per method and level."""
    lines = [
        f"{'method':<11}{'level':>6}{'exceed':>8}{'expected':>9}{'VaR':>10}{'ES':>10}"
        f"{'Kupiec p':>10}{'Christ. p':>10}{'ES Z2':>8}{'Z2 p':>7}"
    ]
    for name, rows in result["methods"].items():
        for r in rows:
            z2_p = "" if r.get("es_z2_p") is None else f"{r['es_z2_p']:.3f}"
            lines.append(
                f"{name:<11}{100 * r['level']:>5g}%{r['exceedances']:>8}{r['expected']:>9.1f}"
                f"{r['mean_var']:>10.4g}{r['mean_es']:>10.4g}{r['kupiec_p']:>10.3f}"
                f"{r['christoffersen_p']:>10.3f}{r['es_z2']:>8.3f}{z2_p:>7}"
            )
    return "\n".join(lines + result["notes"])
