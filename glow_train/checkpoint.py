"""The checkpoint format: one self-describing plain dict per file.

Keys: ``format`` (``"glow-train"``), ``format_version``, ``version`` (package),
``config`` (the resolved run config as plain containers), ``model_config``
(arguments of :class:`glow_train.Glow`), ``model``, ``ema`` (or ``None``),
``optimizer``, ``scheduler``, ``scaler`` (state dicts), ``step``, ``epoch``,
``batch_in_epoch``, ``world_size``, ``best_bpd``, ``last_test_bpd``,
``skipped_steps`` and ``rng`` (torch CPU and CUDA generator states).

Everything is tensors, numbers, strings and containers, so it loads with
``torch.load(path, weights_only=True)``. Files are written atomically: a
temporary file in the same folder, flushed and fsynced, then ``os.replace``d
over the target, so a crash at any moment leaves the previous file intact.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from glow_train.errors import CheckpointError

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "model_weights"]

FORMAT = "glow-train"
FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically write ``state`` (with the format tag added) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load and check a checkpoint; every failure is one :class:`CheckpointError`.

    ``mmap=True`` maps tensors lazily from the file (cheap when only the config is read).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or not written by torch.save): "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a glow-train checkpoint (no 'format: {FORMAT}' key)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer glow-train (format {state['format_version']}); "
            "upgrade glow-train to read it"
        )
    return state


def model_weights(state: dict[str, Any], ema: bool = True) -> dict[str, torch.Tensor]:
    """The model's state dict from a checkpoint: the EMA weights when asked and present."""
    if ema and state.get("ema") is not None:
        prefix = "module."
        return {k[len(prefix) :]: v for k, v in state["ema"].items() if k.startswith(prefix)}
    return state["model"]
