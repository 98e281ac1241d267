"""Test figures: one function shared by the trainer and ``glow-eval``.

:func:`evaluate_objective` scores an objective on a dataset in its unit (bits/dim
for images); :func:`evaluate` is what ``glow-eval`` calls: checkpoint in,
``eval.json`` (and a per-item CSV) out. With the checkpoint's
``train.eval_seed`` and ``dataset.eval_batch_size`` (its defaults) it reproduces
the trainer's test figure exactly on the same device.

The test split is cut into fixed batches ``[0, b), [b, 2b), …``; batch ``i`` of
draw ``d`` is dequantised with noise from a generator seeded by
``(seed, d, i)``. Because the batches and their noise do not depend on the
number of processes, a sharded evaluation (batches dealt round-robin to ranks,
results summed) gives the same number as a single-process one.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from glow_train.checkpoint import resolve_checkpoint
from glow_train.config import EvalConfig, fill_defaults
from glow_train.data import SPLITS, DataSpec, build_dataset, describe_dataset, make_loader
from glow_train.data import validate_dataset_config as check_dataset
from glow_train.dequantize import build_dequantizer
from glow_train.distributed import DistInfo, all_reduce_sum, resolve_device, shard_batches
from glow_train.errors import CheckpointError, ConfigError, NonFiniteError, require_int
from glow_train.objective import METRICS, Objective, load_objective
from glow_train.outputs import claim_outputs, eval_targets, write_atomic
from glow_train.precision import INFERENCE_PRECISIONS, resolve_precision

__all__ = [
    "EvalResult",
    "EvalReport",
    "evaluate_objective",
    "evaluate",
    "eval_dataset",
    "batch_seed",
]


@dataclass
class EvalResult:
    """The mean score over the items (``metric``: ``bpd`` or ``nats_per_dim``), its
    standard error over draws (None for one draw), and each item's score (averaged
    over draws) with its label."""

    value: float
    stderr: float | None
    metric: str
    num_items: int
    draws: int
    per_item: torch.Tensor
    labels: torch.Tensor


def batch_seed(seed: int, draw: int, batch_index: int) -> int:
    return (seed * 1_000_003 + draw * 104_729 + batch_index * 31 + 7) % (2**63 - 1)


@torch.no_grad()
def evaluate_objective(
    objective: Objective,
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device | str,
    seed: int,
    draws: int = 1,
    dist: DistInfo | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> EvalResult:
    """The objective's score on every item of ``dataset`` (``(item, label)`` pairs).

    Args:
        objective: the (unwrapped) objective; it is put in eval mode.
        batch_size: items per batch (``dataset.eval_batch_size``); part of the noise
            schedule.
        device: where to compute.
        seed: dequantisation seed (``train.eval_seed``); the same seed gives the same number.
        draws: noise draws per item; the standard error of the mean over draws is
            reported when ``draws > 1``.
        dist: shard the batches over the ranks of a process group and sum the results.
    """
    device = torch.device(device)
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    n = len(dataset)
    batches = shard_batches(n, batch_size, rank, world)
    first_batch = rank
    loader = make_loader(
        dataset, batch_size, batch_sampler=batches, num_workers=num_workers, device=device.type
    )
    objective.eval()
    per_draw = torch.zeros(draws, n, dtype=torch.float64, device=device)
    labels = torch.zeros(n, dtype=torch.int64, device=device)
    bar = tqdm(total=len(batches) * draws, disable=not progress, unit="batch", desc="eval")
    for j, batch in enumerate(loader):
        index = torch.tensor(batches[j], device=device)
        batch = batch.to(device, non_blocking=True)
        labels[index] = batch.y
        x, y = objective.prepare(batch.x), objective.labels(batch)
        batch_index = first_batch + j * world
        for d in range(draws):
            gen = torch.Generator(device).manual_seed(batch_seed(seed, d, batch_index))
            nll = objective(x, objective.noise(x, gen), y)  # in fp32: the same number every run
            per_draw[d, index] = objective.score(nll).double()
            bar.update(1)
    bar.close()
    all_reduce_sum(per_draw)
    all_reduce_sum(labels)
    draw_means = per_draw.mean(dim=1)
    stderr = None
    if draws > 1:
        stderr = (draw_means.std(unbiased=True) / math.sqrt(draws)).item()
    return EvalResult(
        value=draw_means.mean().item(),
        stderr=stderr,
        metric=objective.metric,
        num_items=n,
        draws=draws,
        per_item=per_draw.mean(dim=0).cpu(),
        labels=labels.cpu(),
    )


# ------------------------------------------------------------------------- glow-eval


@dataclass
class EvalReport:
    """What :func:`evaluate` computed and wrote: ``summary`` is the content of ``eval.json``."""

    summary: dict[str, Any]
    result: EvalResult
    json_path: Path
    csv_path: Path | None


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


def _write_csv(path: Path, result: EvalResult) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", result.metric])
        for i, (label, value) in enumerate(
            zip(result.labels.tolist(), result.per_item.tolist(), strict=True)
        ):
            writer.writerow([i, label if label >= 0 else "", repr(value)])


def density_of(spec: DataSpec) -> str | None:
    """What a vector model's density is of, when it is not the file's values themselves."""
    given = f" given the previous {spec.context}" if spec.context else ""
    if spec.transform == "log_return":
        return f"log-returns of {', '.join(spec.series)} in windows of {spec.window}{given}"
    if spec.context:
        return f"{', '.join(spec.series)} in windows of {spec.window}{given}"
    return None


def _checkpoint_eval_settings(info: dict[str, Any], ckpt: Path) -> tuple[dict[str, Any], int]:
    """The checkpoint's dataset config and its ``train.eval_seed``."""
    config = info.get("config") or {}
    try:
        return config["dataset"], int(config["train"]["eval_seed"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{ckpt} has no config.dataset or config.train.eval_seed; not a glow-train run"
        ) from err


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
        out: a folder, or a ``.json`` file (:func:`glow_train.outputs.eval_targets`);
            default ``<checkpoint folder>/eval/<ckpt stem>_<dataset>_<split>/``.
        overwrite: replace existing files that ``out`` names (never the checkpoint or
            the dataset's files: :mod:`glow_train.outputs`).
        device: ``auto|cpu|cuda|cuda:N`` or a ``torch.device``.
        ema: use the EMA weights when the checkpoint has them.
        progress: show a progress bar.
        precision: ``"fp32"`` (figures comparable across machines), ``"bf16"`` or
            ``"auto"`` (:func:`glow_train.precision.resolve_precision`).

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
        precision=precision,
        overwrite=overwrite,
    )
    if opts.split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {opts.split!r}")
    draws = require_int("draws", opts.draws, 1)
    seed = require_int("seed", seed, 0, allow_none=True)
    batch_size = require_int("batch_size", batch_size, 1, allow_none=True)
    n_bits = require_int("n_bits", n_bits, 1, 8, allow_none=True)
    device = resolve_device(device if device is not None else opts.device)
    chosen = resolve_precision(opts.precision, device, INFERENCE_PRECISIONS)
    ckpt = resolve_checkpoint(ckpt, ("best.pt", "last.pt"))

    objective, info = load_objective(ckpt, ema=opts.ema, device=device)
    checkpoint_dataset, checkpoint_seed = _checkpoint_eval_settings(info, ckpt)
    data_cfg = eval_dataset(checkpoint_dataset, dataset, dataset_overrides)
    spec = describe_dataset(data_cfg)
    shape = spec.shape
    model_shape = tuple(info["data"]["shape"])
    if shape != model_shape or spec.kind != info["data"]["kind"]:
        raise ConfigError(spec.mismatch_message(data_cfg, info["data"], ckpt))
    seed = checkpoint_seed if seed is None else seed
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
    with chosen.autocast(device.type):
        result = evaluate_objective(
            objective,
            data,
            batch_size=batch_size,
            device=device,
            seed=seed,
            draws=draws,
            num_workers=int(data_cfg.get("num_workers") or 0),
            progress=opts.progress,
        )
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
        "stderr": result.stderr,
        "conditional": objective.flow.num_classes > 0,  # the figure is of p(x|y)
        "metric": result.metric,
        "unit": METRICS[result.metric],
        "dataset": data_cfg["name"],
        "split": opts.split,
        "num_images": result.num_items,
        "draws": draws,
        "checkpoint": str(ckpt.resolve()),
        "step": info.get("step"),
        "seed": seed,
        "precision": chosen.name,
        "batch_size": batch_size,
        "n_bits": objective.dequantizer.n_bits,
        "model_n_bits": model_bits,  # what it was trained on (n_bits= may differ)
        "ema": info["ema_used"],
        "device": str(device),
        "dataset_config": data_cfg,
    }
    if opts.per_image:
        write_atomic(csv_path, lambda tmp: _write_csv(tmp, result))
    text = json.dumps(summary, indent=2, default=str, allow_nan=False) + "\n"
    write_atomic(json_path, lambda tmp: tmp.write_text(text))
    return EvalReport(summary, result, json_path, csv_path)
