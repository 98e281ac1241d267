"""What a run must carry across a restart: counters, RNG states, and the resume checks.

`Progress` holds the counters; `checkpoint_state` assembles the
checkpoint dict (`glow_train.io.checkpoint` describes its keys) and
`restore` puts one back, continuing at the same place in the data even
with another number of processes or batch size.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from glow_train import __version__
from glow_train.data.spec import DataSpec
from glow_train.errors import CheckpointError
from glow_train.likelihood.objective import Objective
from glow_train.training.optim import Optimization, StepOutcome

__all__ = ["Progress", "checkpoint_state", "restore", "model_record"]


@dataclass
class Progress:
    """The counters of a run. Scores are in the objective's unit (`metric`)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float | None = None  # on the selection split (validation, else test)
    last_test_score: float | None = None
    last_val_score: float | None = None
    skipped_steps: int = 0
    overflow_steps: int = 0
    best_step: int | None = None  # the step best_score (and best.pt) is from
    evals_since_best: int = 0  # evaluations since best_score last improved (early stopping)
    bad_in_a_row: int = 0  # not saved: a resumed run starts with a clean record
    finished: bool = False  # the final evaluation is done (saved; a resumed run starts False)

    def count(self, outcome: StepOutcome) -> None:
        """Add a step's outcome to the skip and overflow counters."""
        if outcome.skipped:
            self.skipped_steps += 1
            self.bad_in_a_row += 1
        elif outcome.overflow:
            self.overflow_steps += 1
        else:
            self.bad_in_a_row = 0


def model_record(objective: Objective) -> dict[str, Any]:
    """The `model_config` entry: the model's registry name and constructor arguments."""
    return {"name": objective.flow.name, **objective.flow.config}


def checkpoint_state(
    cfg: DictConfig,
    objective: Objective,
    spec: DataSpec,
    optim: Optimization,
    progress: Progress,
    world_size: int,
    batch_size: int,
    selection: str = "test",
) -> dict[str, Any]:
    """The whole state of a run as one plain dict (format version 2). `selection`:
    the split `best_score` (and `best.pt`) is chosen on, `"val"` or `"test"`."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "version": __version__,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model_config": model_record(objective),
        "objective_config": objective.config(),
        "data": spec.to_dict(),
        "objective": objective.state_dict(),
        "ema": optim.ema.state_dict() if optim.ema is not None else None,
        "optimizer": optim.optimizer.state_dict(),
        "scheduler": optim.scheduler.state_dict(),
        "schedule_horizon": optim.horizon,
        "scaler": optim.scaler.state_dict(),
        "step": progress.step,
        "epoch": progress.epoch,
        "batch_in_epoch": progress.batch_in_epoch,
        "world_size": world_size,
        "batch_size": batch_size,
        "metric": objective.metric,
        "best_score": progress.best_score,
        "best_step": progress.best_step,
        "evals_since_best": progress.evals_since_best,
        "selection": selection,
        "last_test_score": progress.last_test_score,
        "last_val_score": progress.last_val_score,
        "skipped_steps": progress.skipped_steps,
        "overflow_steps": progress.overflow_steps,
        "finished": progress.finished,
        "rng": rng,
    }


def _check_same_model(state: dict[str, Any], objective: Objective, source: Path) -> None:
    current = model_record(objective)
    # arguments added since the checkpoint was written take their defaults
    signature = inspect.signature(type(objective.flow).__init__).parameters.values()
    defaults = {p.name: p.default for p in signature if p.default is not inspect.Parameter.empty}
    saved = {**{k: v for k, v in defaults.items() if k in current}, **state["model_config"]}
    if saved == current:
        return
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    raise CheckpointError(
        f"{source} holds a model with a different configuration ({', '.join(diff)}: "
        f"checkpoint {[saved.get(k) for k in diff]} vs run "
        f"{[current.get(k) for k in diff]}); resume without changing "
        "model or dataset settings, or start a new run"
    )


def restore(
    state: dict[str, Any],
    source: Path,
    objective: Objective,
    optim: Optimization,
    world_size: int,
    batch_size: int,
    steps_per_epoch: int,
) -> Progress:
    """Load a checkpoint into the objective and its optimisation; the run's counters.

    A different global batch (processes × batch size) continues at the same fraction
    of the epoch; an epoch with less than a batch left is finished.
    """
    _check_same_model(state, objective, source)
    try:
        objective.load_state_dict(state["objective"])
    except RuntimeError as err:  # e.g. train.class_loss_weight switched on or off
        raise CheckpointError(
            f"{source} does not fit this run's objective ({str(err).splitlines()[0]}); resume "
            "with the run's train.dequantization and train.class_loss_weight"
        ) from err
    if optim.ema is not None:
        if state.get("ema") is not None:
            optim.ema.load_state_dict(state["ema"])
        else:  # EMA switched on at resume: start it from the current weights
            optim.ema.module.load_state_dict(state["objective"])
    try:
        optim.optimizer.load_state_dict(state["optimizer"])
    except ValueError as err:
        added = sorted(set(objective.state_dict()) - set(state["objective"]))
        if added:  # filled in by a load hook: the weights load, the optimiser's state not
            raise CheckpointError(
                f"{source} was written before this version's model had {', '.join(added)}: "
                "glow-eval and glow-sample read it, but training cannot resume from it; "
                "start a new run (without ckpt=)"
            ) from err
        raise CheckpointError(f"{source}: optimiser state does not fit: {err}") from err
    optim.scheduler.load_state_dict(state["scheduler"])
    optim.horizon = state.get("schedule_horizon")
    optim.scaler.load_state_dict(state["scaler"])
    progress = Progress(
        step=int(state["step"]),
        epoch=int(state["epoch"]),
        batch_in_epoch=int(state["batch_in_epoch"]),
        best_score=state.get("best_score"),
        best_step=state.get("best_step"),
        evals_since_best=int(state.get("evals_since_best") or 0),
        last_test_score=state.get("last_test_score"),
        last_val_score=state.get("last_val_score"),
        skipped_steps=int(state.get("skipped_steps", 0)),
        overflow_steps=int(state.get("overflow_steps", 0)),
    )
    if state["world_size"] * state["batch_size"] != world_size * batch_size:
        # A different global batch: continue at the same fraction of the epoch.
        seen = progress.batch_in_epoch * state["batch_size"] * state["world_size"]
        progress.batch_in_epoch = seen // (batch_size * world_size)
    if progress.batch_in_epoch >= steps_per_epoch:  # less than a batch left
        progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        except (RuntimeError, IndexError):
            pass  # a different number of GPUs: the trainer's randomness does not need it
    return progress
