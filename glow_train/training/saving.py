"""The run's checkpoints: written only when the model is healthy, the last good one
remembered, the periodic ones in the background.

`CheckpointWriter` runs the trained objective (and its EMA) on a fixed small probe
batch before every write; a model whose log-likelihoods are not finite is not
written over the file there is, and the messages then name the last good checkpoint
(`CheckpointWriter.last_good_text`).

A periodic `last.pt` (`train.ckpt_every`) does not stall training: the state is
copied to host memory at the step (on CUDA into pinned memory, with one wait for
the copies), and a thread serialises and writes that copy, atomically as every
write, while the next steps run. The copy is taken at the step, so the file is
exactly that step's state whatever the steps after it change. At most one write is
in flight; any other write (`best.pt`, the final and the interrupted `last.pt`)
first waits for it and is written before `save` returns, and a failed background
write raises at the next `save` or `wait`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_map

from glow_train.io.checkpoint import save_checkpoint
from glow_train.likelihood.objective import Objective
from glow_train.training.compiling import eager
from glow_train.training.monitor import Monitor

__all__ = ["CheckpointWriter"]

#: a batch on the model's grid, its dequantisation noise and its labels
Probe = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


class CheckpointWriter:
    """Writes `run_dir/<name>` from `state()` when every objective of `objectives()`
    (the trained one and the EMA's) gives finite log-likelihoods on `probe`.

    `last_good`: the newest checkpoint known healthy, `(path, step)`, e.g. the one a
    run resumed from; `monitor` logs a refused write.
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
        self._writing: threading.Thread | None = None
        self._failed: BaseException | None = None

    @torch.no_grad()
    def healthy(self) -> bool:
        """Whether the trained weights, and the EMA's, give finite log-likelihoods on the
        probe batch: what a checkpoint must satisfy before it is written as good."""
        x, noise, y = self.probe
        with eager():  # compiled regions: no second compilation for the probe
            return all(bool(torch.isfinite(o(x, noise, y)).all()) for o in self.objectives())

    def save(self, name: str, step: int, background: bool = False) -> Path | None:
        """Write `run_dir/name` (the state at `step`) if the model is `healthy`; else
        keep the file there is, say so, and return `None`.

        Args:
            name: the file name (`last.pt`, `best.pt`).
            step: the step the state is at.
            background: write from a host copy in a thread and return at once (the
                path it will have); otherwise the file is written on return.
        """
        self.wait()  # one write in flight at most, and in order
        if not self.healthy():
            self.monitor.log(
                f"step {step}: the model's outputs are not finite; {name} not written "
                f"({self.last_good_text()})"
            )
            return None
        path = self.run_dir / name
        if not background:
            save_checkpoint(self.state(), path)
            self.last_good = (path, step)
            return path
        copy = host_copy(self.state())
        self._writing = threading.Thread(
            target=self._write, args=(copy, path, step), name=f"write {name}"
        )
        self._writing.start()
        return path

    def _write(self, state: dict[str, Any], path: Path, step: int) -> None:
        try:
            save_checkpoint(state, path)
            self.last_good = (path, step)
        except BaseException as err:  # raised again in the training thread by wait()
            self._failed = err

    def wait(self) -> None:
        """Wait for the write in flight, if any; raise its error if it failed."""
        if self._writing is not None:
            self._writing.join()
            self._writing = None
        if self._failed is not None:
            err, self._failed = self._failed, None
            raise err

    def last_good_text(self) -> str:
        """`last good checkpoint: <path> (step N)`, or that there is none."""
        if self._writing is not None:  # the write in flight decides
            self._writing.join()
        if self.last_good is None:
            return "no good checkpoint was written"
        path, step = self.last_good
        return f"last good checkpoint: {path} (step {step})"


def host_copy(state: Any) -> Any:
    """`state` with every tensor copied to host memory: on CUDA into pinned memory
    without blocking and then one wait for all the copies; CPU tensors are cloned
    (training goes on changing them in place)."""
    cuda = []

    def copy(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if not t.is_cuda:
            return t.detach().clone()
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        cuda.append(t.device)
        return host.copy_(t.detach(), non_blocking=True)

    copied = tree_map(copy, state)
    for device in set(cuda):
        torch.cuda.synchronize(device)
    return copied
