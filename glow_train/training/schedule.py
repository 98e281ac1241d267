"""When training stops and how the learning rate moves until then (`train.time_limit`
is parsed by `glow_train.config.parse_duration`).

The cosine decay runs to a *horizon*: the step limit, or, when `train.time_limit`
will end the run first, the step the clock is expected to stop it at. The trainer
estimates that step from the measured step rate every `CLOCK_EVERY` steps
(ranks agree on the smallest estimate) and records it in the checkpoint, so a
time-limited run ends at a low learning rate and a resumed one continues from the
same schedule."""

from __future__ import annotations

import math

from omegaconf import DictConfig

__all__ = ["total_steps", "lr_factor", "reached_limits", "clock_horizon", "CLOCK_EVERY"]

CLOCK_EVERY = 20  # steps between estimates of where the clock will stop the run


def total_steps(tcfg: DictConfig, steps_per_epoch: int) -> int | None:
    """The step at which `train.max_steps` or `train.max_epochs` stops the run
    (the tighter of the two), or `None` when neither is set."""
    limits = []
    if tcfg.max_steps is not None:
        limits.append(int(tcfg.max_steps))
    if tcfg.max_epochs is not None:
        limits.append(int(tcfg.max_epochs) * steps_per_epoch)
    return min(limits) if limits else None


def reached_limits(tcfg: DictConfig, step: int, epoch: int) -> bool:
    """The step and epoch limits (the same on every rank, unlike the clock)."""
    if tcfg.max_steps is not None and step >= int(tcfg.max_steps):
        return True
    return tcfg.max_epochs is not None and epoch >= int(tcfg.max_epochs)


def lr_factor(
    tcfg: DictConfig, steps_per_epoch: int, step: int, horizon: int | None = None
) -> float:
    """The learning-rate multiplier at `step`: a linear warm-up over
    `train.warmup_steps`, then a cosine decay to 0 at `horizon` (the clock's
    estimate) or else `total_steps` when `train.cosine_decay` (else constant;
    also constant while a time-limited run without a step limit has no estimate yet)."""
    warmup = int(tcfg.warmup_steps)
    if step < warmup:
        return (step + 1) / warmup
    end = horizon if horizon is not None else total_steps(tcfg, steps_per_epoch)
    if tcfg.cosine_decay and end is not None:
        progress = min((step - warmup) / max(end - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def clock_horizon(
    step: int, steps_done: int, elapsed: float, remaining: float, limit: int | None
) -> int | None:
    """Where the clock will stop the run: `step` plus the steps the measured rate
    (`steps_done` in `elapsed` seconds) fits in `remaining` seconds, capped by
    the step `limit`; `None` before there is a rate to go by."""
    if steps_done < 1 or elapsed <= 0:
        return None
    estimate = step + int(remaining * steps_done / elapsed)
    return estimate if limit is None else min(estimate, limit)
