"""One optimisation step of an objective: the batch's noise and flips, the update, and
the counting of its outcome.

`Stepper` holds what a step needs (the objective, its possibly wrapped
copy, the `Optimization` and the run's
`Progress`); the trainer builds it and the
loop (`glow_train.training.loop.TrainingLoop`) drives it.

Determinism: every random choice of a step (flips, dequantisation noise, dropout)
comes from a generator seeded by `(seed, step, rank)` (`step_seed`), so a
resumed run draws the same as one that never stopped.
"""

from __future__ import annotations

from typing import Any

import torch

from glow_train.data import Batch
from glow_train.likelihood.objective import Objective
from glow_train.runtime.distributed import all_reduce_max
from glow_train.runtime.precision import Precision
from glow_train.training.monitor import Monitor
from glow_train.training.optim import Optimization, StepOutcome
from glow_train.training.state import Progress

__all__ = ["Stepper", "step_seed"]


def step_seed(seed: int, step: int, rank: int) -> int:
    """A distinct 63-bit seed for each (run seed, step, rank)."""
    return (seed * 1_000_003 + step * 1_009 + rank * 7_919 + 17) % (2**63 - 1)


class Stepper:
    """The objective and its optimisation, one step at a time.

    Args:
        objective: the trained objective (raw, unwrapped).
        optim: its optimiser, schedule, scaler and EMA.
        progress: the run's counters (`progress` may be replaced on resume).
        monitor: where the schedule's horizon is recorded.
        seed: the run's seed.
        rank: this process's rank.
        device: this process's device.
        precision: the precision the step runs in (its autocast).
        class_weight: the weight of the auxiliary class loss.
        hflip: flip each image left-right with probability 1/2.
    """

    def __init__(
        self,
        objective: Objective,
        optim: Optimization,
        progress: Progress,
        monitor: Monitor,
        *,
        seed: int,
        rank: int,
        device: torch.device,
        precision: Precision,
        class_weight: float,
        hflip: bool,
    ):
        self.objective, self.optim, self.progress, self.monitor = (
            objective,
            optim,
            progress,
            monitor,
        )
        self.seed, self.rank, self.device, self.precision = seed, rank, device, precision
        self.class_weight, self.hflip = class_weight, hflip
        #: the objective the step runs: itself, or its DDP / compiled wrapper
        self.wrapped: torch.nn.Module = objective
        self.stop_seen = {"signalled": False, "time_up": False}  # on any rank, agreed

    @property
    def step(self) -> int:
        """Optimisation steps taken so far."""
        return self.progress.step

    @property
    def eval_objective(self) -> Objective:
        """The EMA's copy of the objective when there is one, else the trained one."""
        return self.optim.ema.module if self.optim.ema is not None else self.objective

    def prepare_batch(
        self, batch: Batch, step: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """A loader batch -> `(x, noise, y)` for `train_step`: flipped (if
        `hflip`), on the model's grid, with its dequantisation noise."""
        gen = torch.Generator(self.device).manual_seed(step_seed(self.seed, step, self.rank))
        # the labels are checked on the host batch, before the copy: the same check on
        # the device would wait for it
        labelled = self.objective.labels(batch) is not None
        batch = batch.to(self.device, non_blocking=True)
        data = batch.x
        if self.hflip:
            flip = torch.rand(data.shape[0], generator=gen, device=self.device) < 0.5
            data = torch.where(flip.view(-1, *([1] * (data.dim() - 1))), data.flip(-1), data)
        x = self.objective.prepare(data)
        noise = self.objective.noise(x, gen)
        return x, noise, batch.y if labelled else None

    def train_step(
        self,
        x: torch.Tensor,
        noise: torch.Tensor | None,
        y: torch.Tensor | None = None,
        signalled: bool = False,
        time_up: bool = False,
    ) -> dict[str, Any]:
        """One optimiser step; skipped if anything is non-finite (see
        `glow_train.training.optim.Optimization.step`). Returns the figures of
        the step whose outcome became known: this one, or under the deferred step
        (the default) the previous one, whose flags the device finished meanwhile."""
        if not self.objective.training:  # evaluation and sampling switch it back after them
            self.objective.train()
        self.optim.optimizer.zero_grad(set_to_none=True)
        # dropout draws from the global generator: seed it per (seed, step, rank) too,
        # so a resumed run drops the same units whatever ran in between
        torch.manual_seed(step_seed(self.seed, self.step, self.rank) + 1)
        with self.precision.autocast(self.device.type):
            nll = self.wrapped(x, noise, y, self.class_weight)
        loss = self.objective.score(nll).mean()
        deferred = self.optim.deferred
        outcome = self.optim.step(self.objective, loss, signalled, time_up)
        self.progress.step += 1
        return self._record(outcome, self.progress.step - 1 if deferred else self.progress.step)

    def _record(self, outcome: StepOutcome | None, step: int) -> dict[str, Any]:
        """Count the outcome of step `step` once it is known; the figures the loop logs
        (`score` and `grad_norm` are `None` when no outcome is known yet). A signal
        or the time limit seen on any rank is kept in `stop_seen`."""
        if outcome is None:  # the first deferred step: nothing known yet
            return {"step": step, "score": None, "grad_norm": None, "lr": self.optim.lr}
        self.stop_seen["signalled"] |= outcome.signalled
        self.stop_seen["time_up"] |= outcome.time_up
        self.progress.count(outcome)
        return {
            "step": step,
            "score": outcome.loss,
            "grad_norm": outcome.grad_norm,
            "skipped": outcome.skipped,
            "overflow": outcome.overflow,
            "lr": self.optim.lr,
        }

    def set_horizon(self, estimate: int | None) -> None:
        """Let the cosine decay end at the clock's estimate of the final step; every
        rank takes the smallest estimate, so the schedule stays the same everywhere."""
        value = torch.tensor([-(estimate if estimate is not None else 2**62)], device=self.device)
        agreed = -int(all_reduce_max(value).item())
        if agreed < 2**62:
            self.optim.horizon = agreed
            self.monitor.scalar("schedule_horizon", agreed, self.step)

    def settle(self) -> None:
        """Count the deferred step's outcome now, before anything reads the state
        (evaluation, checkpoints, the end of the run)."""
        outcome = self.optim.flush()
        if outcome is not None:
            self._record(outcome, self.progress.step)
