"""The checkpoint format: one self-describing plain dict per file.

Keys (format version 2): `format` (`"glow-train"`), `format_version`,
`version` (package), `config` (the resolved run config as plain containers),
`model_config` (the model's registry `name` and constructor arguments),
`objective_config` (the dequantiser's name and bit depth), `data` (the
`DataSpec` of the training data), `objective` (the
state dict of the `Objective`: the flow's weights under
`flow.`, a trainable dequantiser's under `dequantizer.`), `ema` (the
`AveragedModel` of the objective, or `None`), `optimizer`, `scheduler`,
`scaler` (state dicts), `step`, `epoch`, `batch_in_epoch`, `world_size`,
`batch_size`, `metric` (`"bpd"` or `"nats_per_dim"`), `best_score` (on
the split named by `selection`: `"val"`, or `"test"` for runs without a
validation split and older checkpoints), `last_test_score`, `last_val_score`
(in that unit), `skipped_steps`, `overflow_steps` (fp16)
`rng` (torch CPU and CUDA generator states) and `finished` (the final evaluation
was done; `False` when a signal stopped the run, absent from older files).

Version-1 files (the flow's state dict under `model`, `best_bpd` /
`last_test_bpd`, no model name) are upgraded on load by `upgrade_v1`, so
every reader sees version 2.

Everything is tensors, numbers, strings and containers, so it loads with
`torch.load(path, weights_only=True)`. Files are written atomically: a
temporary file in the same folder, flushed and fsynced, then `os.replace`d
over the target, so a crash at any moment leaves the previous file intact.
This module imports no model: the model registry rebuilds what a file holds.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from glow_train.errors import CheckpointError
from glow_train.io.outputs import write_atomic

__all__ = [
    "FORMAT",
    "write_atomic",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "upgrade_v1",
    "model_config",
    "objective_weights",
    "flow_weights",
    "CheckpointError",
]

FORMAT = "glow-train"
FORMAT_VERSION = 2


def resolve_checkpoint(path: str | os.PathLike, prefer: tuple[str, ...]) -> Path:
    """`path` itself, or for a run folder the first of `prefer` (e.g. `best.pt`,
    `last.pt`) that it holds.

    Raises:
        CheckpointError: a folder holding none of them.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    for name in prefer:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(
        f"{path} is a folder without {' or '.join(prefer)}; pass ckpt= a checkpoint file "
        "or a run folder that holds one"
    )


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically write `state` (with the format tag added) to `path`."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    return write_atomic(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load and check a checkpoint; every failure is one `CheckpointError`.

    `mmap=True` maps tensors lazily from the file (cheap when only the config is read).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch.load fails on arbitrary bytes in many ways
        if isinstance(err, pickle.UnpicklingError) and zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path} was written by torch.save but is not a glow-train checkpoint: it holds "
                "Python objects (a whole model or optimiser?), which are not loaded; pass a "
                "last.pt or best.pt written by glow-train"
            ) from err
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
    if state.get("format_version", 1) < 2:
        try:
            state = upgrade_v1(state)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{path} is an incomplete version-1 checkpoint") from err
    return state


def upgrade_v1(state: dict[str, Any]) -> dict[str, Any]:
    """A version-1 checkpoint (always a `Glow` on quantised images) in
    the version-2 layout; the weights themselves are unchanged."""
    state = dict(state)
    model_cfg = dict(state["model_config"])
    n_bits = int(state["config"]["dataset"]["n_bits"])
    state["model_config"] = {"name": "glow", **model_cfg}
    state["objective_config"] = {"dequantizer": "uniform", "n_bits": n_bits}
    state["data"] = {
        "kind": "image",
        "shape": [model_cfg["in_channels"], *model_cfg["image_size"]],
        "n_bits": n_bits,
        "num_classes": int(model_cfg.get("num_classes", 0)),
    }
    state["objective"] = {f"flow.{k}": v for k, v in state.pop("model").items()}
    if state.get("ema") is not None:
        state["ema"] = {
            (f"module.flow.{k[len('module.') :]}" if k.startswith("module.") else k): v
            for k, v in state["ema"].items()
        }
    state["metric"] = "bpd"
    state["best_score"] = state.pop("best_bpd", None)
    state["last_test_score"] = state.pop("last_test_bpd", None)
    state["format_version"] = FORMAT_VERSION
    return state


def model_config(state: dict[str, Any], path: Any) -> tuple[str, dict[str, Any]]:
    """`(model name, constructor arguments)` of a loaded checkpoint."""
    try:
        config = dict(state["model_config"])
        return config.pop("name"), config
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{path} has no model_config; not a glow-train run") from err


def _under(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a state dict under `prefix`, with the prefix taken off."""
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def objective_weights(
    state: dict[str, Any], ema: bool = True, part: str | None = None
) -> dict[str, torch.Tensor]:
    """The objective's state dict from a checkpoint (the EMA weights when asked and
    present), or only one `part` of it: `"flow"` or `"dequantizer"`."""
    if ema and state.get("ema") is not None:
        weights = _under(state["ema"], "module.")
    else:
        weights = state["objective"]
    return weights if part is None else _under(weights, f"{part}.")


def flow_weights(state: dict[str, Any], ema: bool = True) -> dict[str, torch.Tensor]:
    """The flow's (model's) state dict alone, out of `objective_weights`."""
    return objective_weights(state, ema, "flow")
