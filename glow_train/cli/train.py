"""`glow-train`: compose the run config and call `glow_train.training.train`
(the run reports itself through its monitor, on rank 0). Like every command module
it imports only Hydra and OmegaConf at the top, the library inside the app.

Under `-m` (a sweep) one failed job prints one line and returns `nan` to the
sweeper, which goes on with the next. A run stopped by `SIGINT` or `SIGTERM` exits 130
or 143 once `last.pt` is saved; by the pre-emption signal, 0 (it is requeued).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from glow_train.cli.common import CONFIG_PATH, GROUPS, report, typed_options

if TYPE_CHECKING:
    from glow_train.training import TrainResult

__all__ = ["app", "sweep_objective"]


def sweep_objective(result: TrainResult, multirun: bool) -> float | None:
    """What the task returns to a sweeper: the final model's validation figure, or its
    test figure when there is no validation split (said so under `-m`); `nan` (a
    failed trial) for a run stopped by a signal before its end."""
    value = result.last_val_score if result.selection == "val" else result.last_test_score
    if result.interrupted:
        if multirun:
            print("objective for the sweeper: nan (interrupted before the end: a failed trial)")
        return float("nan")
    if multirun:
        why = "" if result.selection == "val" else " (no validation split: the test figure)"
        print(f"objective for the sweeper: {result.selection} {result.metric} {value:.4f}{why}")
    return value


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def app(cfg: DictConfig) -> float | None:
    # the library (PyTorch) on use: this module loads with Hydra alone
    """`glow-train`: train with the composed `cfg`; returns the selection score (for sweeps)."""
    from glow_train.runtime.cluster import export_torch_env
    from glow_train.runtime.memory import keep_freed_memory
    from glow_train.training import train
    from glow_train.training.checks import refuse_unused_options
    from glow_train.training.resume import auto_resume, finished_run, resume_config
    from glow_train.training.signals import exit_status

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    returned: list[float | None] = [None]
    status = [0]  # of a run stopped by a signal (a sweep's job: its objective is nan)
    keep_freed_memory()  # again: a submitit task runs this function without the console script
    export_torch_env()  # a submitit / srun task knows its rank from here on
    main = int(os.environ.get("RANK", "0")) == 0

    def run():
        config = cfg
        if multirun and main:
            print(f"job {hydra_cfg.job.num}: {' '.join(hydra_cfg.overrides.task)}")
        if multirun and cfg.run_dir is None:  # the job's own folder: multirun/<date>/<time>/<n>
            folder = Path(hydra_cfg.runtime.output_dir)
            if folder.is_relative_to(Path.cwd()):  # as the user named it: multirun/...
                folder = folder.relative_to(Path.cwd())
            with open_dict(config):
                config.run_dir = str(folder)
        if cfg.ckpt == "auto":
            config, state = auto_resume(config)
            done = finished_run(config, state) if state is not None else None
            if done is not None:  # a requeued job that had already finished: not an error
                if main:
                    print(done[0])
                returned[0] = done[1]
                return
        elif cfg.ckpt is not None:
            config = resume_config(cfg, list(hydra_cfg.overrides.task), GROUPS)
        refuse_unused_options(config, typed_options(cfg))
        result = train(config)
        returned[0] = sweep_objective(result, multirun and main)
        if result.interrupted and not multirun:
            status[0] = exit_status(result.stop_signal, result.preempted)

    if report("glow-train", run, exit_on_error=not multirun):
        if status[0]:
            sys.exit(status[0])
        return returned[0]
    # one failed job of a sweep: the sweeper records it as failed (nan) and goes on; the
    # job folder Hydra made for it goes too if the job left nothing in it
    folder = Path(hydra_cfg.runtime.output_dir)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    print(f"job {hydra_cfg.job.num} failed; the sweep goes on", file=sys.stderr)
    return float("nan")
