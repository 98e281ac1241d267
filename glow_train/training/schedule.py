"""When training stops and how the learning rate moves until then (``train.time_limit``
is parsed by :func:`glow_train.config.parse_duration`)."""

from __future__ import annotations

import math

from omegaconf import DictConfig

__all__ = ["total_steps", "lr_factor", "reached_limits"]


def total_steps(tcfg: DictConfig, steps_per_epoch: int) -> int | None:
    """The step at which ``train.max_steps`` or ``train.max_epochs`` stops the run
    (the tighter of the two), or ``None`` when neither is set."""
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


def lr_factor(tcfg: DictConfig, steps_per_epoch: int, step: int) -> float:
    """The learning-rate multiplier at ``step``: a linear warm-up over
    ``train.warmup_steps``, then a cosine decay to 0 at :func:`total_steps` when
    ``train.cosine_decay`` (else constant)."""
    warmup = int(tcfg.warmup_steps)
    if step < warmup:
        return (step + 1) / warmup
    if tcfg.cosine_decay:
        total = max(total_steps(tcfg, steps_per_epoch) - warmup, 1)
        progress = min((step - warmup) / total, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0
