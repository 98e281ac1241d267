r"""Risk backtest of a series model: one-step value-at-risk and expected shortfall on the
test part (``glow-eval ckpt=... backtest=var``).

For each step :math:`t` of the test part, from the ``C`` values before it, the model's
one-step predictive distribution of the first series' next value gives, at each
level :math:`\alpha` (1 % and 5 %),

- :math:`\mathrm{VaR}_\alpha = -q_\alpha` (a loss, positive when the quantile is below 0),
- :math:`\mathrm{ES}_\alpha = -E[r \mid r \le q_\alpha]`,

estimated from ``samples`` draws (the first value of each drawn window). An
exceedance is :math:`r_t < -\mathrm{VaR}_\alpha`. Over the ``n`` test steps with ``x``
exceedances:

- Kupiec's unconditional coverage (POF) test, :math:`LR = -2\log\frac{(1-\alpha)^{n-x}\alpha^x}
  {(1-\hat\pi)^{n-x}\hat\pi^x}`, :math:`\hat\pi = x/n`, against :math:`\chi^2_1`;
- Christoffersen's independence test, comparing the probabilities of an exceedance after
  a calm step and after an exceedance (:math:`\pi_{01}, \pi_{11}`) with their pooled value,
  against :math:`\chi^2_1`.

The same table is computed for historical simulation (the empirical quantile and tail
mean of the training part's values) and, when the ``arch`` package is installed
(``pip install -e '.[finance]'``), for a GARCH(1,1) with Student-t innovations fitted
on the training part and filtered through the test part with those parameters.
Written: ``backtest.json`` (the table), ``backtest.csv`` (one row per test step) and
``backtest.png`` (the returns, each method's 1 % VaR line and the exceedances).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from glow_train.data.checks import split_count
from glow_train.data.spec import DataSpec
from glow_train.data.table import series_values
from glow_train.data.windows import padded_rows
from glow_train.errors import ConfigError
from glow_train.io.outputs import claim_outputs, folder_targets, write_atomic
from glow_train.series.forecast import context_model, draw_given

__all__ = [
    "backtest",
    "coverage",
    "kupiec",
    "christoffersen",
    "var_es",
    "student_t_var_es",
    "LEVELS",
]

LEVELS = (0.01, 0.05)


def var_es(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """VaR and ES at ``level`` from ``draws`` ``(T, S)`` (one row per step), as losses."""
    q = np.quantile(draws, level, axis=1)
    tail = np.where(draws <= q[:, None], draws, np.nan)
    return -q, -np.nanmean(tail, axis=1)


def kupiec(exceed: np.ndarray, level: float) -> tuple[float, float]:
    """Kupiec's proportion-of-failures statistic and its chi-square(1) p-value."""
    n, x = len(exceed), int(exceed.sum())
    pi = x / n
    log_null = (n - x) * math.log(1 - level) + x * math.log(level)
    log_alt = (n - x) * _log(1 - pi) + x * _log(pi)
    lr = max(-2 * (log_null - log_alt), 0.0)
    return lr, float(stats.chi2.sf(lr, 1))


def christoffersen(exceed: np.ndarray) -> tuple[float, float]:
    """Christoffersen's independence statistic and its chi-square(1) p-value."""
    prev, curr = exceed[:-1].astype(int), exceed[1:].astype(int)
    n = {(a, b): int(((prev == a) & (curr == b)).sum()) for a in (0, 1) for b in (0, 1)}
    n0, n1 = n[0, 0] + n[0, 1], n[1, 0] + n[1, 1]
    pi01 = n[0, 1] / n0 if n0 else 0.0
    pi11 = n[1, 1] / n1 if n1 else 0.0
    pi = (n[0, 1] + n[1, 1]) / max(n0 + n1, 1)
    log_null = (n[0, 0] + n[1, 0]) * _log(1 - pi) + (n[0, 1] + n[1, 1]) * _log(pi)
    log_alt = (
        n[0, 0] * _log(1 - pi01)
        + n[0, 1] * _log(pi01)
        + n[1, 0] * _log(1 - pi11)
        + n[1, 1] * _log(pi11)
    )
    lr = max(-2 * (log_null - log_alt), 0.0)
    return lr, float(stats.chi2.sf(lr, 1))


def _log(p: float) -> float:
    """``log p`` with ``0 log 0 = 0`` (the counts multiplying it are then 0)."""
    return math.log(p) if p > 0 else 0.0


def coverage(returns: np.ndarray, var: np.ndarray, es: np.ndarray, level: float) -> dict:
    """One row of the backtest table: the exceedances of ``returns`` below ``-var``
    (VaR as a positive loss, one per step), their count against ``level * n``, the
    mean VaR and ES, and the Kupiec and Christoffersen statistics and p-values."""
    exceed = returns < -var
    lr_uc, p_uc = kupiec(exceed, level)
    lr_ind, p_ind = christoffersen(exceed)
    return {
        "level": level,
        "exceedances": int(exceed.sum()),
        "expected": level * len(returns),
        "rate": float(exceed.mean()),
        "mean_var": float(var.mean()),
        "mean_es": float(es.mean()),
        "kupiec_lr": lr_uc,
        "kupiec_p": p_uc,
        "christoffersen_lr": lr_ind,
        "christoffersen_p": p_ind,
    }


@torch.no_grad()
def model_draws(flow, spec: DataSpec, contexts: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """``(T, samples)`` draws of the first series' next value given each context ``(T, C·c)``."""
    generator = torch.Generator(next(flow.parameters()).device).manual_seed(seed)
    out = np.empty((len(contexts), samples))
    chunk = max(1, 65536 // samples)
    for i in range(0, len(contexts), chunk):
        ctx = torch.from_numpy(contexts[i : i + chunk]).double().repeat_interleave(samples, dim=0)
        first = draw_given(flow, spec, ctx, generator)[:, 0]  # the window's first value, column
        out[i : i + chunk] = first.view(-1, samples).numpy()
    return out


def student_t_var_es(
    mean: np.ndarray, sd: np.ndarray, nu: float, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """VaR and ES at ``level`` (positive losses) of returns ``mean + sd * T``, ``T`` a
    Student-t with ``nu > 2`` degrees of freedom scaled to unit variance."""
    unit = math.sqrt((nu - 2) / nu)  # a standard t times this has unit variance
    t_q = stats.t.ppf(level, nu)
    tail = (nu + t_q**2) / (nu - 1) * stats.t.pdf(t_q, nu) / level  # -E[T | T <= t_q]
    return -(mean + sd * unit * t_q), -(mean - sd * unit * tail)


def garch_t_var_es(
    values: np.ndarray, first_test: int, levels: tuple[float, ...]
) -> dict[float, tuple[np.ndarray, np.ndarray]] | None:
    """VaR/ES of a GARCH(1,1)-t fitted on ``values[:first_test]`` and filtered through
    the rest with those parameters; ``None`` when ``arch`` is not installed."""
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
    nu = float(fit.params["nu"])
    return {a: student_t_var_es(mean / factor, sigma / factor, nu, a) for a in levels}


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
    """The backtest table (also written as ``backtest.json``, with ``backtest.csv`` and
    ``backtest.png``, into ``out``: a folder, or the JSON file's name with the others
    beside it; default ``<checkpoint folder>/backtest/``), under the output policy of
    :mod:`glow_train.io.outputs` (existing files that ``out`` names are kept unless
    ``overwrite``).

    Raises:
        ConfigError: a model without a context, or ``samples`` below 100.
    """
    if samples < 100:
        raise ConfigError(f"backtest_samples={samples}: use at least 100 draws per step")
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
    notes = []
    garch = garch_t_var_es(values[:, 0], int(steps[0]), LEVELS)
    if garch is None:
        notes.append("garch_t skipped: the arch package is not installed (pip install arch)")
    else:
        methods["garch_t"] = garch
    table = {name: [coverage(returns, *m[a], a) for a in LEVELS] for name, m in methods.items()}
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
    write_atomic(png_path, lambda tmp: _plot(tmp, returns, var))
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


def _plot(path: Path, returns: np.ndarray, var: dict[str, np.ndarray], size=(900, 400)) -> None:
    """Returns (black), each method's VaR as a line at ``-VaR``, exceedances of the model's
    VaR as red dots, the return range and a legend in the methods' colours (PIL: no
    plotting library needed)."""
    from PIL import Image, ImageDraw

    width, height, margin = size[0], size[1], 20
    low = min(returns.min(), *(-v.max() for v in var.values()))
    high = max(returns.max(), 0.0)
    span = high - low if high > low else 1.0

    def xy(t: float, v: float) -> tuple[float, float]:
        x = margin + (width - 2 * margin) * t / max(len(returns) - 1, 1)
        return x, height - margin - (height - 2 * margin) * (v - low) / span

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.line([xy(t, r) for t, r in enumerate(returns)], fill=(0, 0, 0), width=1)
    for name, v in var.items():
        draw.line(
            [xy(t, -x) for t, x in enumerate(v)], fill=COLOURS.get(name, (0, 150, 0)), width=2
        )
    for t in np.flatnonzero(returns < -var["glow1d"]):
        x, y = xy(t, returns[t])
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(220, 0, 0))
    draw.text((margin, 2), f"{high:.4g}", fill=(0, 0, 0))  # the return axis' ends
    draw.text((margin, height - margin + 4), f"{low:.4g}", fill=(0, 0, 0))
    x = width // 4
    for label, colour in (
        [("returns", (0, 0, 0))]
        + [(f"{name} -VaR", COLOURS.get(name, (0, 150, 0))) for name in var]
        + [("exceedances of glow1d", (220, 0, 0))]
    ):
        draw.text((x, 2), label, fill=colour)
        x += 7 * len(label) + 16
    image.save(path, format="PNG")


def format_table(result: dict[str, Any]) -> str:
    """The printed table: one line per method and level."""
    lines = [
        f"{'method':<11}{'level':>6}{'exceed':>8}{'expected':>9}{'VaR':>10}{'ES':>10}"
        f"{'Kupiec p':>10}{'Christ. p':>10}"
    ]
    for name, rows in result["methods"].items():
        for r in rows:
            lines.append(
                f"{name:<11}{100 * r['level']:>5g}%{r['exceedances']:>8}{r['expected']:>9.1f}"
                f"{r['mean_var']:>10.4g}{r['mean_es']:>10.4g}{r['kupiec_p']:>10.3f}"
                f"{r['christoffersen_p']:>10.3f}"
            )
    return "\n".join(lines + result["notes"])
