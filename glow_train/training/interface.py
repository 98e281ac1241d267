"""What the training loop uses of a trainer, stated as a protocol.

:mod:`glow_train.training.loop` takes its trainer as a :class:`LoopTrainer`, so the
loop depends on this interface and not on :class:`glow_train.training.Trainer`
(which calls the loop from :meth:`~glow_train.training.Trainer.fit`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from glow_train.data.spec import DataSpec
from glow_train.distributed import DistInfo, EpochSampler
from glow_train.models import FlowModel
from glow_train.objective import Objective
from glow_train.training.monitor import Monitor
from glow_train.training.state import Progress

__all__ = ["LoopTrainer"]


class LoopTrainer(Protocol):
    """What the loop uses of a trainer (:class:`glow_train.training.Trainer` is one)."""

    cfg: DictConfig
    dist: DistInfo
    device: torch.device
    run_dir: Path
    spec: DataSpec
    seed: int
    objective: Objective
    progress: Progress
    monitor: Monitor
    loader: DataLoader
    sampler: EpochSampler
    batch_size: int
    steps_per_epoch: int
    time_limit: float | None
    selection: str
    stop_seen: dict[str, bool]
    optim: Any  # glow_train.training.optim.Optimization (its EMA)

    @property
    def model(self) -> FlowModel: ...
    @property
    def step(self) -> int: ...
    @property
    def total_steps(self) -> int | None: ...
    @property
    def eval_objective(self) -> Objective: ...
    def prepare_batch(self, batch: Any, step: int) -> tuple[Any, Any, Any]: ...
    def train_step(self, x: Any, noise: Any, y: Any, signalled: bool, time_up: bool) -> dict: ...
    def set_horizon(self, estimate: int | None) -> None: ...
    def settle(self) -> None: ...
    def evaluate(self, split: str = "test") -> float: ...
    def save(self, name: str) -> Path | None: ...
    def last_good_text(self) -> str: ...
