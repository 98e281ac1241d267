r"""``glow-eval``'s library function: checkpoint in, ``eval.json`` (and a per-item CSV) out.

:func:`evaluate` scores with :func:`glow_train.evaluation.scoring.evaluate_objective`, the
function behind the trainer's figures too: with the checkpoint's
``train.eval_seed`` and ``dataset.eval_batch_size`` (its defaults) it reproduces
the trainer's test figure exactly on the same device. For a class-conditional
model it reports the marginal :math:`p(x) = \sum_y p(y)\,p(x \mid y)` beside
:math:`p(x \mid y)`, from the same pass.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glow_train.config import EvalConfig, fill_defaults
from glow_train.data import DataSpec, build_dataset, describe_dataset
from glow_train.data import validate_dataset_config as check_dataset
from glow_train.errors import ConfigError, DataError, NonFiniteError
from glow_train.evaluation.scoring import (
    EvalResult,
    batch_seed,
    class_prior,
    evaluate_objective,
    write_per_item_csv,
)
from glow_train.io.outputs import claim_outputs, eval_targets, write_atomic
from glow_train.likelihood.dequantize import build_dequantizer
from glow_train.likelihood.loading import load_to_score
from glow_train.likelihood.objective import METRICS, Objective
from glow_train.validate import require_int

__all__ = [
    "EvalResult",  # (re-exported from glow_train.evaluation.scoring, their home)
    "EvalReport",
    "evaluate_objective",
    "evaluate",
    "eval_dataset",
    "batch_seed",
    "density_of",
    "model_class_prior",
]


# ------------------------------------------------------------------------- glow-eval


@dataclass
class EvalReport:
    """What :func:`evaluate` computed and wrote: ``summary`` is the content of ``eval.json``."""

    summary: dict[str, Any]
    result: EvalResult
    json_path: Path
    csv_path: Path | None
    marginal: EvalResult | None = None  # a class-conditional model's p(x)


def eval_dataset(
    checkpoint_dataset: Mapping[str, Any],
    dataset: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dataset config to score: the checkpoint's, or ``dataset`` instead, with
    ``overrides`` (keys whose value is not ``None``) on top, checked."""
    cfg = dict(dataset if dataset is not None else checkpoint_dataset)
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return check_dataset(cfg)


def model_class_prior(kind: str, num_classes: int, train_cfg: Mapping[str, Any]) -> torch.Tensor:
    """:math:`p(y)` of a class-conditional model: ``uniform``, or ``train``: the class
    frequencies of the training split of ``train_cfg`` (the checkpoint's dataset)."""
    train = build_dataset(train_cfg, "train") if kind == "train" else None
    return class_prior(kind, num_classes, train)


def density_of(spec: DataSpec) -> str | None:
    """What a vector model's density is of, when it is not the file's values themselves."""
    given = f" given the previous {spec.context}" if spec.context else ""
    if spec.transform == "log_return":
        return f"log-returns of {', '.join(spec.series)} in windows of {spec.window}{given}"
    if spec.context:
        return f"{', '.join(spec.series)} in windows of {spec.window}{given}"
    return None


def evaluate(
    ckpt: str | os.PathLike,
    *,
    split: str | None = None,
    dataset: Mapping[str, Any] | None = None,
    dataset_overrides: Mapping[str, Any] | None = None,
    draws: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    n_bits: int | None = None,
    per_image: bool | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool | None = None,
    device: str | torch.device | None = None,
    ema: bool | None = None,
    progress: bool | None = None,
    class_prior: str | None = None,
    precision: str | None = None,
) -> EvalReport:
    """A checkpoint's score on a dataset split (bits/dim for images); writes ``eval.json``.

    Every ``None`` takes the value of the same key in ``configs/eval.yaml`` (the
    defaults of ``glow-eval``), where ``seed``, ``batch_size`` and ``n_bits`` are
    null: the checkpoint's.

    Args:
        ckpt: a checkpoint written by ``glow-train``, or a run folder (its ``best.pt``,
            else ``last.pt``).
        split: ``"test"`` or ``"train"``.
        dataset: a whole dataset config to score instead of the checkpoint's (e.g.
            ``glow_train.data.dataset_config("mnist", image_size=8)``); its images must
            have the model's shape.
        dataset_overrides: keys replaced on top (``None`` values are ignored), e.g.
            ``{"root": "/data/mnist"}`` when the data moved.
        draws: dequantisation noise draws per item; > 1 reports a standard error.
        seed: dequantisation seed (``None``: the checkpoint's ``train.eval_seed``).
        batch_size: items per batch (``None``: the dataset's ``eval_batch_size``).
        n_bits: bit depth the images are quantised to (``None``: the model's).
        per_image: also write a CSV ``index,label,<metric>`` (label empty when unknown).
        out: a folder, or a ``.json`` file (:func:`glow_train.io.outputs.eval_targets`);
            default ``<checkpoint folder>/eval/<ckpt stem>_<dataset>_<split>/``.
        overwrite: replace existing files that ``out`` names (never the checkpoint or
            the dataset's files: :mod:`glow_train.io.outputs`).
        device: ``auto|cpu|cuda|cuda:N`` or a ``torch.device``.
        ema: use the EMA weights when the checkpoint has them.
        progress: show a progress bar.
        class_prior: the :math:`p(y)` of a class-conditional model's marginal
            :math:`p(x)`: ``"uniform"`` or ``"train"`` (the training split's class
            frequencies); unused for other models.
        precision: ``"fp32"`` (figures comparable across machines), ``"bf16"`` or
            ``"auto"`` (:func:`glow_train.runtime.precision.resolve_precision`).

    Returns:
        The summary (also in ``eval.json``), the full result and the written paths.
        Files are written only after the evaluation finished, each atomically.

    Raises:
        ConfigError, DataError, CheckpointError: bad options, data or checkpoint.
        NonFiniteError: the model's figures are not finite (nothing is written).
    """
    opts = fill_defaults(
        "eval",
        EvalConfig,
        split=split,
        draws=draws,
        per_image=per_image,
        ema=ema,
        progress=progress,
        class_prior=class_prior,
        precision=precision,
        overwrite=overwrite,
    )
    n_bits = require_int("n_bits", n_bits, 1, 8, allow_none=True)
    scoring = load_to_score(ckpt, opts, device, seed, batch_size)
    loaded, checkpoint_dataset = scoring.loaded, scoring.dataset
    seed, draws, batch_size = scoring.seed, scoring.draws, scoring.batch_size
    objective, info, ckpt, device = loaded.objective, loaded.info, loaded.path, loaded.device
    data_cfg = eval_dataset(checkpoint_dataset, dataset, dataset_overrides)
    spec = describe_dataset(data_cfg)
    shape = spec.shape
    model_shape = tuple(info["data"]["shape"])
    if shape != model_shape or spec.kind != info["data"]["kind"]:
        raise ConfigError(spec.mismatch_message(data_cfg, info["data"], ckpt))
    if batch_size is None:
        batch_size = require_int("dataset.eval_batch_size", data_cfg.get("eval_batch_size"), 1)
    model_bits = objective.dequantizer.n_bits
    if n_bits is not None and n_bits != objective.dequantizer.n_bits:
        objective = Objective(objective.flow, build_dequantizer("uniform", n_bits)).eval()
    targets = eval_targets(
        ckpt,
        f"{ckpt.stem}_{data_cfg['name']}_{opts.split}",
        out,
        ["per_image.csv"] if opts.per_image else [],
    )
    json_path, *csvs = claim_outputs(
        [targets[0], *targets[1]], out, opts.overwrite, ckpt, [checkpoint_dataset, data_cfg]
    )
    csv_path = csvs[0] if csvs else None

    data = build_dataset(data_cfg, opts.split)
    p_y = None
    if objective.flow.num_classes > 0:
        train_cfg = eval_dataset(checkpoint_dataset, None, None if dataset else dataset_overrides)
        p_y = model_class_prior(opts.class_prior, objective.flow.num_classes, train_cfg)
    with loaded.autocast():
        result = evaluate_objective(
            objective,
            data,
            batch_size=batch_size,
            device=device,
            seed=seed,
            draws=draws,
            num_workers=int(data_cfg.get("num_workers") or 0),
            progress=opts.progress,
            class_prior=p_y,
        )
    marginal = None
    if p_y is not None:  # the figure of p(x|y), with p(x)'s from the same pass beside it
        if result.conditional is None:
            raise DataError(
                "this model is class-conditional (p(x|y)) and the data has no labels; "
                "score labelled data (digits, mnist, cifar10, dataset.classes=true)"
            )
        marginal, result = result, result.conditional
    if not math.isfinite(result.value):
        bad = int((~torch.isfinite(result.per_item)).sum())
        raise NonFiniteError(
            f"the model of {ckpt} gives non-finite {METRICS[result.metric]} for {bad} of "
            f"{result.num_items} items (a diverged run); evaluate an earlier checkpoint"
        )
    summary = {
        result.metric: result.value,
        **({"nll": result.value} if result.metric == "nats_per_dim" else {}),
        **({"density_of": density_of(spec)} if density_of(spec) else {}),
        "stderr": result.stderr,  # over draws (None for one draw)
        "stderr_items": result.item_stderr,  # over the items: judges a gap between models
        "conditional": objective.flow.num_classes > 0,  # the figure is of p(x|y)
        **(
            {
                f"{result.metric}_marginal": marginal.value,  # of p(x) = sum_y p(y) p(x|y)
                "stderr_marginal": marginal.stderr,
                "class_prior": opts.class_prior,
            }
            if marginal is not None
            else {}
        ),
        "metric": result.metric,
        "unit": METRICS[result.metric],
        "dataset": data_cfg["name"],
        "split": opts.split,
        "num_items": result.num_items,
        "draws": draws,
        "checkpoint": str(ckpt.resolve()),
        "step": info.get("step"),
        "seed": seed,
        "precision": loaded.precision.name,
        "batch_size": batch_size,
        "n_bits": objective.dequantizer.n_bits,
        "model_n_bits": model_bits,  # what it was trained on (n_bits= may differ)
        "ema": info["ema_used"],
        "device": str(device),
        "dataset_config": data_cfg,
    }
    if opts.per_image:
        table = result if marginal is None else marginal  # p(x|y) and p(x) columns
        write_atomic(csv_path, lambda tmp: write_per_item_csv(tmp, table))
    text = json.dumps(summary, indent=2, default=str, allow_nan=False) + "\n"
    write_atomic(json_path, lambda tmp: tmp.write_text(text))
    return EvalReport(summary, result, json_path, csv_path, marginal)
