r"""`glow-eval`'s library function: checkpoint in, `eval.json` (and a per-item CSV) out.

`evaluate` scores with `glow_train.evaluation.scoring.evaluate_objective`, the
function behind the trainer's figures too: with the checkpoint's
`train.eval_seed` and `dataset.eval_batch_size` (its defaults) it reproduces
the trainer's test figure exactly on the same device. For a class-conditional
model it reports the marginal $p(x) = \sum_y p(y)\,p(x \mid y)$ beside
$p(x \mid y)$, from the same pass.
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

from glow_train.config import EvalConfig
from glow_train.data import DataSpec, build_dataset, describe_dataset
from glow_train.data import validate_dataset_config as check_dataset
from glow_train.data.checks import refuse_unused_dataset_options
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
from glow_train.likelihood.objective import METRICS, NO_LABELS, Objective
from glow_train.modes import command_mode

__all__ = [
    "EvalResult",  # (re-exported from glow_train.evaluation.scoring, their home)
    "EvalReport",
    "evaluate_objective",
    "evaluate",
    "eval_dataset",
    "dataset_choice",
    "batch_seed",
    "density_of",
    "model_class_prior",
]


# ------------------------------------------------------------------------- glow-eval


@dataclass
class EvalReport:
    """What `evaluate` computed and wrote.

    Attributes:
        summary: the content of `eval.json` (the figure, its unit, the data, the
            checkpoint and the options).
        result: the score of the split (`EvalResult`), per item included.
        json_path: the written `eval.json`.
        csv_path: the written per-item CSV (`per_image=true`), else `None`.
        marginal: a class-conditional model's $p(x)$ under the class prior, else `None`.
    """

    summary: dict[str, Any]
    result: EvalResult
    json_path: Path
    csv_path: Path | None
    marginal: EvalResult | None = None


def eval_dataset(
    checkpoint_dataset: Mapping[str, Any],
    dataset: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The dataset config to score: the checkpoint's, or `dataset` instead, with
    `overrides` (keys whose value is not `None`) on top, checked; an override the
    source does not read (`prepared` on MNIST) is refused in one line."""
    cfg = dict(dataset if dataset is not None else checkpoint_dataset)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg.update(given)
    refuse_unused_dataset_options(cfg, [f"dataset.{key}" for key in given])
    return check_dataset(cfg)


def model_class_prior(kind: str, num_classes: int, train_cfg: Mapping[str, Any]) -> torch.Tensor:
    """$p(y)$ of a class-conditional model: `uniform`, or `train`: the class
    frequencies of the training split of `train_cfg` (the checkpoint's dataset)."""
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


#: the options of `glow-eval` a plain evaluation uses (`glow_train.config.EvalConfig`)
USES = (
    "split",
    "dataset",
    "draws",
    "seed",
    "batch_size",
    "n_bits",
    "per_image",
    "out",
    "overwrite",
    "device",
    "ema",
    "progress",
    "class_prior",
    "precision",
)


def dataset_choice(dataset: Mapping[str, Any] | None) -> tuple[dict | None, dict | None]:
    """`glow-eval`'s `dataset` option as (a whole dataset config to score instead of the
    checkpoint's, keys to replace in the checkpoint's): a mapping with a `name` (what
    `dataset=<name>` composes) is the former, any other the latter; `None` values are
    left out of a whole config."""
    if not dataset:
        return None, None
    if dataset.get("name") is not None:
        return {k: v for k, v in dataset.items() if v is not None}, None
    return None, dict(dataset)


@command_mode("eval", "glow-eval without ood= or backtest=", USES)
def evaluate(ckpt: str | os.PathLike, opts: EvalConfig) -> EvalReport:
    """A checkpoint's score on a dataset split (bits/dim for images); writes `eval.json`.

    Called as `evaluate(ckpt, **options)` (e.g. `split="train"`, `draws=4`): every
    option left out takes its value in `configs/eval.yaml`, the defaults of
    `glow-eval`, where `seed`, `batch_size` and `n_bits` are null: the checkpoint's
    `train.eval_seed`, its dataset's `eval_batch_size` and the model's bit depth. Or
    as `evaluate(ckpt, options=opts)` with an `EvalConfig`. The options, their
    meaning and their defaults are those of `glow-eval --help`; `dataset` is a whole
    dataset config to score instead of the checkpoint's when it has a `name` (e.g.
    `glow_train.data.dataset_config("mnist", image_size=8)`; its images must have the
    model's shape), otherwise keys replacing the checkpoint's (e.g.
    `{"root": "/data/mnist"}` when the data moved). Options of `ood=` and `backtest=`
    are refused.

    Args:
        ckpt: a checkpoint written by `glow-train`, or a run folder (its `best.pt`,
            else `last.pt`).
        opts: the options, built by the call as above.

    Returns:
        The summary (also in `eval.json`), the full result and the written paths.
        Files are written only after the evaluation finished, each atomically.

    Raises:
        ConfigError: a bad option, or data the model does not take.
        DataError: missing or unusable data.
        CheckpointError: a missing, foreign or unusable checkpoint.
        NonFiniteError: the model's figures are not finite (nothing is written).
    """
    dataset, dataset_overrides = dataset_choice(opts.dataset)
    n_bits = opts.n_bits
    scoring = load_to_score(ckpt, opts)
    loaded, checkpoint_dataset = scoring.loaded, scoring.dataset
    seed, draws = scoring.seed, scoring.draws
    objective, info, ckpt, device = loaded.objective, loaded.info, loaded.path, loaded.device
    data_cfg = eval_dataset(checkpoint_dataset, dataset, dataset_overrides)
    spec = describe_dataset(data_cfg)
    shape = spec.shape
    model_shape = tuple(info["data"]["shape"])
    if shape != model_shape or spec.kind != info["data"]["kind"]:
        raise ConfigError(spec.mismatch_message(data_cfg, info["data"], ckpt))
    batch_size = scoring.eval_batch_size(data_cfg)
    model_bits = objective.dequantizer.n_bits
    if n_bits is not None and n_bits != objective.dequantizer.n_bits:
        objective = Objective(objective.flow, build_dequantizer("uniform", n_bits)).eval()
    targets = eval_targets(
        ckpt,
        f"{ckpt.stem}_{data_cfg['name']}_{opts.split}",
        opts.out,
        ["per_image.csv"] if opts.per_image else [],
    )
    json_path, *csvs = claim_outputs(
        [targets[0], *targets[1]], opts.out, opts.overwrite, ckpt, [checkpoint_dataset, data_cfg]
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
            num_workers=data_cfg.get("num_workers") or 0,  # an int, or auto
            progress=opts.progress,
            class_prior=p_y,
        )
    marginal = None
    if p_y is not None:  # the figure of p(x|y), with p(x)'s from the same pass beside it
        if result.conditional is None:
            raise DataError(NO_LABELS)
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
