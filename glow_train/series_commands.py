"""The command-line side of the series tools: ``glow-sample mode=forecast`` and
``glow-eval backtest=var`` turn their Hydra config into arguments of
:func:`glow_train.forecast.forecast` and :func:`glow_train.backtest.backtest` and
print what those wrote."""

from __future__ import annotations

from omegaconf import DictConfig

from glow_train.errors import ConfigError

__all__ = ["forecast_command", "backtest_command"]


def forecast_command(cfg: DictConfig, ckpt: str) -> None:
    """glow-sample mode=forecast (:mod:`glow_train.forecast`)."""
    from glow_train.distributed import resolve_device
    from glow_train.forecast import forecast

    result = forecast(
        ckpt,
        cfg.horizon,
        cfg.n,
        context_end=cfg.context_end,
        seed=cfg.seed,
        out=cfg.out,
        device=resolve_device(str(cfg.device)),
        ema=cfg.ema,
    )
    units = "prices" if result.in_prices else "values"
    print(f"{result.csv_path} ({cfg.n} paths of {cfg.horizon} steps, in {units})")
    print(result.png_path)


def backtest_command(cfg: DictConfig, ckpt: str) -> None:
    """glow-eval backtest=var (:mod:`glow_train.backtest`)."""
    from glow_train.backtest import backtest, format_table
    from glow_train.distributed import resolve_device

    if cfg.backtest != "var":
        raise ConfigError(f"backtest={cfg.backtest!r}: the one backtest is backtest=var")
    result = backtest(
        ckpt,
        samples=cfg.backtest_samples,
        seed=0 if cfg.seed is None else cfg.seed,
        out=cfg.out,
        device=resolve_device(str(cfg.device)),
        ema=cfg.ema,
    )
    print(
        f"one-step VaR/ES of {result['series']} over {result['test_steps']} test steps "
        f"({result['samples']} draws per step): {result['folder']}"
    )
    print(format_table(result))
