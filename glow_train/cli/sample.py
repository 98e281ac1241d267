"""`glow-sample`: run the `mode=` the command line names (`glow_train.sampling.run_mode`)
with the composed config as its options, and print the files it wrote, one per line,
then anything else it has to say (`glow_train.modes.Written.lines`)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from glow_train.cli.common import (
    CONFIG_PATH,
    report,
    require_ckpt,
    say_precision,
    say_which,
    typed_options,
)

__all__ = ["app"]


@hydra.main(config_path=CONFIG_PATH, config_name="sample", version_base="1.3")
def app(cfg: DictConfig) -> None:
    """`glow-sample`: run the mode `cfg.mode` on `cfg.ckpt` and print what it wrote."""
    from glow_train.sampling import MODES, run_mode  # PyTorch on use

    def run():
        ckpt = require_ckpt(cfg, "glow-sample")
        written = run_mode(cfg.mode, ckpt, cfg, typed_options(cfg))
        for line in written.lines():
            print(line)
        say_which(cfg, ckpt, "glow-sample")
        if "precision" in MODES[cfg.mode].uses:  # a mode run in a precision says which
            say_precision(cfg, "glow-sample")

    report("glow-sample", run)
