"""From a checkpoint to a ready objective: the one path every reader of a checkpoint takes.

`glow-eval` (figures and `ood=`), `glow-sample` in every mode and the Python
API all call `load`: it resolves a run folder to its checkpoint file,
rebuilds the model (`glow_train.models.FlowModel.from_state`), the
dequantiser, the standardisation and the class head from the file's own records,
takes the EMA weights when asked and present, puts everything on the device in
eval mode, and carries the precision the caller runs it in
(`Loaded.autocast`).

The file format itself is `glow_train.io.checkpoint`'s; this module is the
only one that turns it into modules.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glow_train.config import EvalConfig
from glow_train.data.registry import validate_dataset_config
from glow_train.data.spec import DataSpec
from glow_train.errors import CheckpointError, ConfigError
from glow_train.flows.standardize import Standardize
from glow_train.io.checkpoint import load_checkpoint, model_config, objective_weights
from glow_train.io.checkpoint import resolve_checkpoint as resolve
from glow_train.likelihood.dequantize import build_dequantizer
from glow_train.likelihood.objective import ClassHead, Objective
from glow_train.models.base import FlowModel
from glow_train.models.registry import MODELS
from glow_train.runtime.distributed import resolve_device
from glow_train.runtime.precision import INFERENCE_PRECISIONS, Precision, resolve_precision
from glow_train.validate import require_int

__all__ = [
    "Loaded",
    "load",
    "ToScore",
    "load_to_score",
    "load_objective",
    "load_model",
    "resolve_checkpoint",
]

#: the files of a run folder a reader takes, in order of preference
PREFERRED = ("best.pt", "last.pt")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """`path` itself, or for a run folder its `best.pt` (else `last.pt`)."""
    return resolve(path, PREFERRED)


@dataclass
class Loaded:
    """A checkpoint ready to use, as [`glow_train.load`][glow_train.likelihood.loading.load]
    returns it.

    Attributes:
        objective: the model and its dequantiser, in eval mode on `device`
            (`Objective`; the bare model is `flow`).
        info: the checkpoint's other entries: `config` (the run's whole config),
            `step`, `data` (the data's description), ..., and `ema_used`.
        path: the checkpoint file it came from.
        device: where the objective is.
        precision: the precision to run it in (`Precision`, `auto` resolved for the
            device); `autocast` applies it.
    """

    objective: Objective
    info: dict[str, Any]
    path: Path
    device: torch.device
    precision: Precision

    @property
    def flow(self) -> FlowModel:
        """The model (`objective.flow`): `log_prob`, `sample`, `encode`, `decode`."""
        return self.objective.flow

    @property
    def spec(self) -> DataSpec:
        """The training data's description, as recorded in the checkpoint."""
        return DataSpec.from_dict(self.info["data"])

    def autocast(self) -> AbstractContextManager:
        """`bf16`: the coupling networks under bf16 autocast (the priors, the 1x1
        convolutions and the stream between layers stay fp32); `fp32`: nothing."""
        return self.precision.autocast(self.device.type)

    def dataset_config(self) -> dict[str, Any]:
        """The checkpoint's dataset config, checked (`validate_dataset_config`)."""
        return validate_dataset_config(self.eval_settings()[0])

    def eval_settings(self) -> tuple[dict[str, Any], int]:
        """The checkpoint's (unchecked) dataset config and its `train.eval_seed`."""
        config = self.info.get("config") or {}
        try:
            return config["dataset"], int(config["train"]["eval_seed"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{self.path} has no config.dataset or config.train.eval_seed; not a glow-train run"
            ) from err


def load(
    ckpt: str | os.PathLike,
    *,
    ema: bool = True,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> Loaded:
    """The checkpoint `ckpt` as a `Loaded`: what `glow_train.load` is.

    Args:
        ckpt: a checkpoint file, or a run folder (its `best.pt`, else `last.pt`).
        ema: use the EMA weights when the checkpoint has them.
        device: `auto|cpu|cuda|cuda:N` or a `torch.device`.
        precision: `fp32`, `bf16` or `auto`
            (`glow_train.runtime.precision.resolve_precision`; `Loaded.autocast`).

    Raises:
        ConfigError: an unknown device or precision.
        CheckpointError: a missing, foreign or unusable checkpoint.

    Returns:
        The objective on `device`, the checkpoint's records, its path and precision.
    """
    device = resolve_device(device)
    chosen = resolve_precision(precision, device, INFERENCE_PRECISIONS)
    path = resolve_checkpoint(ckpt)
    objective, info = load_objective(path, ema=ema, device=device)
    return Loaded(objective, info, path, device, chosen)


def load_objective(
    path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[Objective, dict[str, Any]]:
    """A checkpoint's objective (its model and dequantiser) in eval mode, and the
    checkpoint's entries other than the weights and optimiser (`config`, `step`,
    `data`, ...).

    Args:
        path: the checkpoint file.
        ema: use the EMA weights when the checkpoint has them.
        device: where to put the objective.

    Raises:
        CheckpointError: every failure (a missing, foreign or unusable file).
    """
    state = load_checkpoint(path)
    name, _ = model_config(state, path)
    if name not in MODELS:
        raise CheckpointError(f"{path} holds an unknown model {name!r}")
    flow = MODELS[name].from_state(state, path, ema)
    try:
        settings = dict(state["objective_config"])
        own = ("dequantizer", "n_bits", "standardize", "class_head")
        extra = {k: v for k, v in settings.items() if k not in own}
        dequantizer = build_dequantizer(settings["dequantizer"], settings["n_bits"], **extra)
        dequantizer.load_state_dict(objective_weights(state, ema, "dequantizer"))
        standardize = None
        if settings.get("standardize") is not None:
            standardize = Standardize.placeholder(int(settings["standardize"]))
            standardize.load_state_dict(objective_weights(state, ema, "standardize"))
        class_head = None
        if settings.get("class_head") is not None:
            class_head = ClassHead(*settings["class_head"])
            class_head.load_state_dict(objective_weights(state, ema, "class_head"))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot rebuild the dequantiser ({err})") from err
    info = {k: v for k, v in state.items() if k not in ("objective", "ema", "optimizer", "scaler")}
    info["ema_used"] = bool(ema and state.get("ema") is not None)
    objective = Objective(flow, dequantizer, standardize, class_head)
    return objective.to(device).eval(), info


def load_model(
    path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[FlowModel, dict[str, Any]]:
    """Whatever model a checkpoint holds, without its dequantiser.

    Args:
        path: the checkpoint file.
        ema: use the EMA weights when the checkpoint has them.
        device: where to put the model.

    Returns:
        The model in eval mode, and the checkpoint's other entries as `load_objective`
        gives them.

    Raises:
        CheckpointError: a missing, foreign or unusable checkpoint.
    """
    objective, info = load_objective(path, ema, device)
    return objective.flow, info


@dataclass
class ToScore:
    """A checkpoint ready for `glow-eval` (its figures or `ood=`) and the settings both
    take from it.

    Attributes:
        loaded: the checkpoint (`Loaded`).
        dataset: the checkpoint's dataset config (unchecked).
        seed: the given seed, else the checkpoint's `train.eval_seed`.
        draws: how many noise draws to average.
        batch_size: the evaluation batch size (`None`: the dataset's `eval_batch_size`).
    """

    loaded: Loaded
    dataset: dict[str, Any]
    seed: int
    draws: int
    batch_size: int | None

    def eval_batch_size(self, data_cfg: Mapping[str, Any]) -> int:
        """The batch size to score `data_cfg` in: the given one, else its `eval_batch_size`."""
        if self.batch_size is not None:
            return self.batch_size
        return require_int("dataset.eval_batch_size", data_cfg.get("eval_batch_size"), 1)


def load_to_score(ckpt: str | os.PathLike, opts: EvalConfig) -> ToScore:
    """`load` `ckpt` with the options `glow-eval` and `ood=` share (`ema`, `precision`,
    `device`; already checked by `glow_train.modes.command_options`), and the seed:
    `opts.seed`, else the checkpoint's `train.eval_seed`.

    Raises:
        ConfigError: an option this model has no use for, rather than a figure it
            does not change: `draws` above 1 or a `seed` for continuous data (nothing
            to dequantise: every draw is the same), a `class_prior` other than
            uniform for a model that is not class-conditional.
    """
    loaded = load(ckpt, ema=opts.ema, device=opts.device, precision=opts.precision)
    continuous = "continuous values, nothing to dequantise"
    if loaded.objective.dequantizer.n_bits is None and opts.draws > 1:
        raise ConfigError(
            f"draws={opts.draws} averages over dequantisation noise, and {loaded.path} models "
            f"data without it ({continuous}); leave draws= out"
        )
    if loaded.objective.dequantizer.n_bits is None and opts.seed is not None:
        raise ConfigError(
            f"seed={opts.seed} seeds dequantisation noise, and {loaded.path} models data "
            f"without it ({continuous}); leave seed= out"
        )
    if loaded.flow.num_classes == 0 and opts.class_prior != "uniform":
        raise ConfigError(
            f"class_prior={opts.class_prior} is the p(y) of a class-conditional model, and "
            f"{loaded.path} is not one; leave class_prior= out"
        )
    dataset, checkpoint_seed = loaded.eval_settings()
    seed = checkpoint_seed if opts.seed is None else opts.seed
    return ToScore(loaded, dataset, seed, opts.draws, opts.batch_size)
