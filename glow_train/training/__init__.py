"""Training: ``train(cfg)`` runs one job; each file does one job.

- ``run``: the entry point, :func:`train`.
- ``checks``: the check of the whole config.
- ``trainer``: data, objective, the step, evaluation and checkpoints.
- ``loop``: the loop, stopping, the final report.
- ``optim``: optimiser, schedule, GradScaler, EMA, the step's update.
- ``schedule``: stopping rules and the learning-rate curve.
- ``state``: counters, the checkpoint dict, resume.
- ``run_dir``: the run-folder policy.
- ``signals``: SIGINT/SIGTERM.
- ``monitor``: progress bar, TensorBoard, log lines.
"""

from glow_train.training.checks import check_config
from glow_train.training.report import TrainingDiverged, TrainResult
from glow_train.training.run import train
from glow_train.training.trainer import Trainer, step_seed
from glow_train.validate import parse_duration

__all__ = [
    "Trainer",
    "TrainResult",
    "TrainingDiverged",
    "check_config",
    "parse_duration",
    "step_seed",
    "train",
]
