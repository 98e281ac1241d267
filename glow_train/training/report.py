"""What a run leaves and says at its end: `TrainResult`, the final report's
lines and the divergence error (`TrainingDiverged`).

Every line names the split of its figure: validation chooses `best.pt` when there
is a validation split, and a test figure never chooses anything then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from glow_train.errors import GlowError, show
from glow_train.models import FlowModel
from glow_train.training.state import Progress

__all__ = ["TrainResult", "TrainingDiverged", "diverged", "final_report"]


class TrainingDiverged(GlowError):
    """Too many consecutive non-finite steps."""


@dataclass
class TrainResult:
    """What a finished run left: its folder, checkpoints, figures and the trained model.

    Scores are in the objective's unit, `metric` (`"bpd"` for images).
    """

    run_dir: Path
    step: int
    metric: str
    best_score: float | None  # on the ``selection`` split
    last_test_score: float | None
    best_ckpt: Path | None
    last_ckpt: Path
    skipped_steps: int
    interrupted: bool
    model: FlowModel  # the raw (unwrapped) model; EMA weights are in the checkpoints
    selection: str = "test"  # the split best_score and best.pt were chosen on
    last_val_score: float | None = None
    best_step: int | None = None  # the step of best.pt
    best_test_score: float | None = None  # early stopping: the test figure of best.pt
    stopped_early: bool = False  # the validation figure stopped improving (train.early_stopping)
    stop_signal: str | None = None  # the signal that stopped an interrupted run (`SIGINT`, ...)
    preempted: bool = False  # that signal was `train.preempt_signal` (the requeue path)


def diverged(train_cfg: DictConfig, progress: Progress, last_good: str) -> TrainingDiverged:
    """The error of a run whose last `train.max_bad_steps` steps were all non-finite,
    with the likely causes and `last_good` (the last good checkpoint, or none)."""
    return TrainingDiverged(
        f"{progress.bad_in_a_row} consecutive steps had a non-finite loss or gradient "
        f"(step {progress.step}); likely causes: a learning rate too high "
        f"(train.lr={show(train_cfg.lr)}), too short a warm-up (train.warmup_steps="
        f"{train_cfg.warmup_steps}), or affine coupling (try model.coupling=additive); "
        f"{last_good}"
    )


def final_report(
    run_dir: Path,
    progress: Progress,
    label: str,
    selection: str,
    best_test: float | None,
    early: bool,
    conditional: bool,
    samples: Path | None,
) -> list[str]:
    """The run's last log lines: its folder, the figures (`label`: the metric's unit)
    with the split of each, `best.pt` and the samples file.

    `best_test`: the test figure of `best.pt` when early stopping chose it on
    validation (`early`: it stopped the run), else `None`; `selection`: the split
    `best.pt` was chosen on; `conditional`: the figures are of p(x|y).
    """
    p, step = progress, progress.step
    lines = [f"run folder: {run_dir}"]
    if best_test is not None:
        stop = f"stopped early at step {step}" if early else f"ended at step {step}"
        lines.append(
            f"val {label}: {p.best_score:.4f} (best, step {p.best_step}); test {label}: "
            f"{best_test:.4f} (best.pt, the model chosen on validation; {stop}, "
            f"final model's test {p.last_test_score:.4f})"
        )
    elif selection == "val":
        lines.append(
            f"val {label}: {p.last_val_score:.4f} (best {p.best_score:.4f}); "
            f"test {label}: {p.last_test_score:.4f} (final model, step {step})"
        )
    else:
        lines.append(
            f"test {label}: {p.last_test_score:.4f} (best {p.best_score:.4f}, step "
            f"{step}; no validation split: best.pt was chosen on test)"
        )
    if conditional:
        lines.append(f"(class-conditional: every {label} above is of p(x|y), given the label)")
    lines.append(f"best checkpoint: {run_dir / 'best.pt'}")
    if samples is not None:
        lines.append(f"samples: {samples}")
    return lines
