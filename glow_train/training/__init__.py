"""Training: `train(cfg)` runs one job; each file does one job.

- `run`: the entry point, `train`.
- `checks`: the check of the whole config.
- `trainer`: builds a run's collaborators (data, objective, stepper, evaluation,
  checkpoint writer, monitor) and hands them to the loop.
- `loop`: `TrainingLoop`, the loop over those
  collaborators: steps, periodic evaluation, samples and checkpoints, stopping.
- `stepper`: one optimisation step (noise, flips, update, its outcome counted).
- `saving`: checkpoints written only when the model is healthy; the last good one.
- `report`: `TrainResult`, the final report's lines, `TrainingDiverged`.
- `optim`: optimiser, schedule, GradScaler, EMA, the step's update.
- `schedule`: stopping rules and the learning-rate curve.
- `state`: counters, the checkpoint dict, resume.
- `run_dir`: the run-folder policy.
- `signals`: SIGINT/SIGTERM.
- `monitor`: progress bar, TensorBoard, log lines.
"""

from glow_train.training.checks import check_config
from glow_train.training.report import TrainingDiverged, TrainResult
from glow_train.training.run import train
from glow_train.training.stepper import step_seed
from glow_train.training.trainer import Trainer
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
