#!/usr/bin/env python
"""The risk backtest on a series whose true value-at-risk is known.

Simulates prices whose log-returns follow a GARCH(1,1) with Student-t innovations
(known parameters), trains the 1-D Glow on them with the defaults and a context
(``glow-train dataset=csv dataset.columns=[close] dataset.transform=log_return
dataset.context=C``), runs ``glow-eval backtest=var`` on it, and adds the rows of
the true conditional VaR and expected shortfall (the filter with the true
parameters), and the true conditional density of the test returns beside the
model's. A well-calibrated model's exceedances stay near ``level * steps`` like the
truth's, and its Kupiec and Christoffersen p-values are not small.

    python scripts/backtest_garch.py --out runs/backtest_garch
    python scripts/backtest_garch.py --context 40 --samples 2000

Needs the ``finance`` extra for the GARCH(1,1)-t row (``pip install -e '.[finance]'``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bench_tabular import garch_t_returns

DF = 5.0  # the innovations' degrees of freedom (garch_t_returns' default)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/backtest_garch"))
    parser.add_argument("--length", type=int, default=4000, help="returns to simulate")
    parser.add_argument("--context", type=int, default=20)
    parser.add_argument("--samples", type=int, default=1000, help="draws per step")
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()

    from hydra import compose, initialize_config_module

    from glow_train.series.backtest import (
        LEVELS,
        backtest,
        coverage,
        format_table,
        student_t_var_es,
    )
    from glow_train.training import train

    args.out.mkdir(parents=True, exist_ok=True)
    returns, logp, sd = garch_t_returns(args.length, args.seed)
    prices = 100.0 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))
    path = args.out / "garch_t_prices.csv"
    np.savetxt(path, prices[:, None], header="close", comments="", fmt="%.10g")
    overrides = [
        "dataset=csv",
        f"dataset.path={path}",
        "dataset.columns=[close]",
        "dataset.transform=log_return",
        f"dataset.context={args.context}",
        f"run_dir={args.out / 'run'}",
        "train.progress=false",
    ]
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        cfg = compose("train", overrides)
    result = train(cfg)
    table = backtest(result.best_ckpt, samples=args.samples, out=args.out / "backtest")
    steps = np.arange(table["first_test_step"], len(returns))
    truth = [coverage(returns[steps], *student_t_var_es(0.0, sd[steps], DF, a), a) for a in LEVELS]
    table["methods"]["truth"] = truth
    print(format_table(table))
    exact = float(-logp[steps].mean())
    print(
        f"test nll, nats per return: model {result.best_test_score:.4f} "
        f"(best.pt), the true conditional density {exact:.4f}"
    )
    table["true_nll"], table["model_nll"] = exact, result.best_test_score
    (args.out / "backtest_with_truth.json").write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
