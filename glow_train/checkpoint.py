"""The checkpoint format: one self-describing plain dict per file.

Keys: ``format`` (``"glow-train"``), ``format_version``, ``version`` (package),
``config`` (the resolved run config as plain containers), ``model_config``
(arguments of :class:`glow_train.Glow`), ``model``, ``ema`` (or ``None``),
``optimizer``, ``scheduler``, ``scaler`` (state dicts), ``step``, ``epoch``,
``batch_in_epoch``, ``world_size``, ``batch_size``, ``best_bpd``, ``last_test_bpd``,
``skipped_steps``, ``overflow_steps`` (fp16) and ``rng`` (torch CPU and CUDA
generator states).

Everything is tensors, numbers, strings and containers, so it loads with
``torch.load(path, weights_only=True)``. Files are written atomically: a
temporary file in the same folder, flushed and fsynced, then ``os.replace``d
over the target, so a crash at any moment leaves the previous file intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from glow_train.errors import CheckpointError

__all__ = [
    "FORMAT",
    "write_atomic",
    "save_checkpoint",
    "load_checkpoint",
    "model_weights",
    "load_model",
]

FORMAT = "glow-train"
FORMAT_VERSION = 1


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, rename it to ``path``.

    A failure (or an interrupt) at any moment leaves the previous ``path`` intact and
    no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
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


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically write ``state`` (with the format tag added) to ``path``."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    return write_atomic(path, lambda tmp: torch.save(state, tmp))


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
    except Exception as err:  # torch.load fails on arbitrary bytes in many ways
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, or not written by torch.save)"
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


def load_model(path: str | os.PathLike, ema: bool = True, device: Any = "cpu"):
    """The :class:`glow_train.Glow` of a checkpoint in eval mode, and the checkpoint's
    entries other than the weights and optimiser (``config``, ``step``, ...).

    Every way the file can fail to give a model is a :class:`CheckpointError`.
    """
    from glow_train.model import Glow

    state = load_checkpoint(path)
    try:
        model = Glow.from_config(state["model_config"])
        model.load_state_dict(model_weights(state, ema=ema))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = " ".join(lines[:2])[:200] or type(err).__name__
        raise CheckpointError(f"{path}: cannot rebuild the model ({detail})") from err
    info = {k: v for k, v in state.items() if k not in ("model", "ema", "optimizer", "scaler")}
    info["ema_used"] = bool(ema and state.get("ema") is not None)
    return model.to(device).eval(), info
