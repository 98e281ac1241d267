"""Console scripts: turn a Hydra config into plain arguments and call the library.

``glow-train`` -> :func:`glow_train.train.train`; ``glow-sample`` and ``glow-eval``
-> :mod:`glow_train.sample` / :mod:`glow_train.evaluate`. Errors the user can fix
(:class:`glow_train.errors.GlowError`) print one line and exit with status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from glow_train.errors import CheckpointError, GlowError

CONFIG_PATH = "pkg://glow_train.configs"
GROUPS = ("dataset", "model", "experiment")


def _report(prog: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except GlowError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: aborted", file=sys.stderr)
        sys.exit(130)


def resume_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The config of a resumed run: the checkpoint's, plus this command line's overrides.

    A plain ``glow-train ckpt=.../last.pt`` continues the run as it was configured
    (whatever the defaults are now); ``train.max_steps=...`` and other ``key=value``
    overrides still apply. Choosing another dataset, model or experiment would make a
    different run, so it is refused.
    """
    from glow_train.checkpoint import load_checkpoint

    state = load_checkpoint(cfg.ckpt, mmap=True)
    groups = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in GROUPS]
    if groups:
        raise CheckpointError(
            f"cannot change {', '.join(groups)} when resuming {cfg.ckpt}; "
            "start a new run instead (without ckpt=)"
        )
    base = OmegaConf.create(state["config"])
    extra = [o for o in overrides if not o.startswith("ckpt=")]
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist([o.lstrip("+") for o in extra]))
    with open_dict(merged):
        merged.ckpt = cfg.ckpt
        merged.run_dir = cfg.run_dir if cfg.run_dir is not None else None
    return merged


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def _train_app(cfg: DictConfig) -> None:
    from glow_train.train import train

    def run():
        config = cfg
        if cfg.ckpt is not None:
            config = resume_config(cfg, list(HydraConfig.get().overrides.task))
        train(config)

    _report("glow-train", run)


def train_main() -> None:
    """Entry point of ``glow-train``."""
    _train_app()
