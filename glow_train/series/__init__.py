"""Series models at work: forecasts of a context model (`forecast`), the one-step VaR/ES
backtest (`backtest`), and the `glow-eval backtest=<name>` registry (`registry`)."""
