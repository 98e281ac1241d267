"""``glow-sample``: run the ``mode=`` the command line names
(:func:`glow_train.sampling.run_mode`) and print the files it wrote, one per line,
then anything else it has to say."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from glow_train.cli.common import (
    CONFIG_PATH,
    plain,
    report,
    require_ckpt,
    say_precision,
    say_which,
)

__all__ = ["app"]


@hydra.main(config_path=CONFIG_PATH, config_name="sample", version_base="1.3")
def app(cfg: DictConfig) -> None:
    from glow_train.sampling import run_mode  # PyTorch on use

    def run():
        ckpt = require_ckpt(cfg, "glow-sample")
        if cfg.mode == "forecast":  # series models with a context
            from glow_train.series_commands import forecast_command

            forecast_command(cfg, ckpt)
            say_which(cfg, ckpt, "glow-sample")
            return
        options = {key: plain(value) for key, value in cfg.items() if key not in ("ckpt", "mode")}
        written = run_mode(cfg.mode, ckpt, options)
        for path in written.paths:
            print(path)
        for line in written.notes:
            print(line)
        say_which(cfg, ckpt, "glow-sample")
        say_precision(cfg, "glow-sample")

    report("glow-sample", run)
