"""The run's checkpoints: written only when the model is healthy, the last good one
remembered.

:class:`CheckpointWriter` runs the trained objective (and its EMA) on a fixed small
probe batch before every write; a model whose log-likelihoods are not finite is
not written over the file there is, and the messages then name the last good
checkpoint (:meth:`CheckpointWriter.last_good_text`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from glow_train.io.checkpoint import save_checkpoint
from glow_train.likelihood.objective import Objective
from glow_train.training.compiling import eager
from glow_train.training.monitor import Monitor

__all__ = ["CheckpointWriter"]

#: a batch on the model's grid, its dequantisation noise and its labels
Probe = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


class CheckpointWriter:
    """Writes ``run_dir/<name>`` from ``state()`` when every objective of ``objectives()``
    (the trained one and the EMA's) gives finite log-likelihoods on ``probe``.

    ``last_good``: the newest checkpoint known healthy, ``(path, step)``, e.g. the one a
    run resumed from; ``monitor`` logs a refused write.
    """

    def __init__(
        self,
        run_dir: Path,
        state: Callable[[], dict[str, Any]],
        objectives: Callable[[], Sequence[Objective]],
        probe: Probe,
        monitor: Monitor,
        last_good: tuple[Path, int] | None = None,
    ):
        self.run_dir, self.state, self.objectives = run_dir, state, objectives
        self.probe, self.monitor, self.last_good = probe, monitor, last_good

    @torch.no_grad()
    def healthy(self) -> bool:
        """Whether the trained weights, and the EMA's, give finite log-likelihoods on the
        probe batch: what a checkpoint must satisfy before it is written as good."""
        x, noise, y = self.probe
        with eager():  # compiled regions: no second compilation for the probe
            return all(bool(torch.isfinite(o(x, noise, y)).all()) for o in self.objectives())

    def save(self, name: str, step: int) -> Path | None:
        """Write ``run_dir/name`` (the state at ``step``) if the model is :meth:`healthy`;
        else keep the file there is, say so, and return ``None``."""
        if not self.healthy():
            self.monitor.log(
                f"step {step}: the model's outputs are not finite; {name} not written "
                f"({self.last_good_text()})"
            )
            return None
        path = save_checkpoint(self.state(), self.run_dir / name)
        self.last_good = (path, step)
        return path

    def last_good_text(self) -> str:
        """``last good checkpoint: <path> (step N)``, or that there is none."""
        if self.last_good is None:
            return "no good checkpoint was written"
        path, step = self.last_good
        return f"last good checkpoint: {path} (step {step})"
