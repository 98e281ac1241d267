"""Test bits/dim: one function shared by the trainer and ``glow-eval``.

:func:`evaluate_bpd` scores a model on a dataset; :func:`evaluate` is what
``glow-eval`` calls: checkpoint in, ``eval.json`` (and a per-image CSV) out. With
the checkpoint's ``train.eval_seed`` and ``dataset.eval_batch_size`` (its defaults)
it reproduces the trainer's test bits/dim exactly on the same device.

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

from glow_train.checkpoint import load_model, write_atomic
from glow_train.data import build_dataset, image_shape, make_loader, validate_dataset_config
from glow_train.data.datasets import SPLITS
from glow_train.distributed import DistInfo, all_reduce_sum, resolve_device, shard_batches
from glow_train.errors import CheckpointError, ConfigError, require_int
from glow_train.likelihood import bits_per_dim, preprocess
from glow_train.model import Glow
from glow_train.sample import checkpoint_n_bits

__all__ = ["EvalResult", "EvalReport", "evaluate_bpd", "evaluate", "eval_dataset", "batch_seed"]


@dataclass
class EvalResult:
    """Mean bits/dim over the images, its standard error over draws (None for one draw),
    and each image's bits/dim (averaged over draws) with its label."""

    bpd: float
    stderr: float | None
    num_images: int
    draws: int
    per_image: torch.Tensor
    labels: torch.Tensor


def batch_seed(seed: int, draw: int, batch_index: int) -> int:
    return (seed * 1_000_003 + draw * 104_729 + batch_index * 31 + 7) % (2**63 - 1)


@torch.no_grad()
def evaluate_bpd(
    model: Glow,
    dataset: Dataset,
    *,
    n_bits: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    draws: int = 1,
    dist: DistInfo | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> EvalResult:
    """Bits/dim of ``model`` on every image of ``dataset`` (uint8 images, labels).

    Args:
        model: the (unwrapped) Glow; it is put in eval mode.
        n_bits: bit depth of the data (see :func:`glow_train.likelihood.bits_per_dim`).
        seed: dequantisation seed; the same seed gives the same number.
        draws: noise draws per image; the standard error of the mean over draws is
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
    model.eval()
    per_draw = torch.zeros(draws, n, dtype=torch.float64, device=device)
    labels = torch.zeros(n, dtype=torch.int64, device=device)
    bar = tqdm(total=len(batches) * draws, disable=not progress, unit="batch", desc="eval")
    for j, (images, y) in enumerate(loader):
        index = torch.tensor(batches[j], device=device)
        images = images.to(device, non_blocking=True)
        labels[index] = torch.as_tensor(y, device=device).long()
        batch_index = first_batch + j * world
        for d in range(draws):
            gen = torch.Generator(device).manual_seed(batch_seed(seed, d, batch_index))
            x = preprocess(images, n_bits, gen)
            log_prob = model.log_prob(x)  # in fp32: the same number on every run
            per_draw[d, index] = bits_per_dim(log_prob, model.num_dims, n_bits).double()
            bar.update(1)
    bar.close()
    all_reduce_sum(per_draw)
    all_reduce_sum(labels)
    draw_means = per_draw.mean(dim=1)
    stderr = None
    if draws > 1:
        stderr = (draw_means.std(unbiased=True) / math.sqrt(draws)).item()
    return EvalResult(
        bpd=draw_means.mean().item(),
        stderr=stderr,
        num_images=n,
        draws=draws,
        per_image=per_draw.mean(dim=0).cpu(),
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
    return validate_dataset_config(cfg)


def _output_paths(
    ckpt: Path, dataset: str, split: str, out: str | os.PathLike | None
) -> tuple[Path, Path]:
    """``eval.json`` and ``per_image.csv`` in the output folder (default
    ``<checkpoint folder>/eval/<ckpt stem>_<dataset>_<split>/``); an ``out`` ending in
    ``.json`` names the JSON file itself and the CSV goes beside it as ``<stem>_per_image.csv``.
    """
    if out is not None and str(out).lower().endswith(".json"):
        json_path = Path(out)
        return json_path, json_path.with_name(f"{json_path.stem}_per_image.csv")
    folder = (
        Path(out) if out is not None else ckpt.parent / "eval" / f"{ckpt.stem}_{dataset}_{split}"
    )
    return folder / "eval.json", folder / "per_image.csv"


def _write_csv(path: Path, result: EvalResult) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "label", "bpd"])
        for i, (label, bpd) in enumerate(
            zip(result.labels.tolist(), result.per_image.tolist(), strict=True)
        ):
            writer.writerow([i, label if label >= 0 else "", repr(bpd)])


def evaluate(
    ckpt: str | os.PathLike,
    *,
    split: str = "test",
    dataset: Mapping[str, Any] | None = None,
    dataset_overrides: Mapping[str, Any] | None = None,
    draws: int = 1,
    seed: int | None = None,
    batch_size: int | None = None,
    n_bits: int | None = None,
    per_image: bool = False,
    out: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    ema: bool = True,
    progress: bool = False,
) -> EvalReport:
    """Bits/dim of a checkpoint's model on a dataset split; writes ``eval.json``.

    Args:
        ckpt: a checkpoint written by ``glow-train``.
        split: ``"test"`` or ``"train"``.
        dataset: a whole dataset config to score instead of the checkpoint's (e.g.
            ``glow_train.data.dataset_config("mnist", image_size=8)``); its images must
            have the model's shape.
        dataset_overrides: keys replaced on top (``None`` values are ignored), e.g.
            ``{"root": "/data/mnist"}`` when the data moved.
        draws: dequantisation noise draws per image; > 1 reports a standard error.
        seed: dequantisation seed (``None``: the checkpoint's ``train.eval_seed``).
        batch_size: images per batch (``None``: the dataset's ``eval_batch_size``).
        n_bits: bit depth the images are quantised to (``None``: the model's).
        per_image: also write a CSV ``index,label,bpd`` (label empty when unknown).
        out: see :func:`_output_paths`.
        device: ``auto|cpu|cuda|cuda:N`` or a ``torch.device``.
        ema: use the EMA weights when the checkpoint has them.
        progress: show a progress bar.

    Returns:
        The summary (also in ``eval.json``), the full result and the written paths.
        Files are written only after the evaluation finished, each atomically.

    Raises:
        ConfigError, DataError, CheckpointError: bad options, data or checkpoint.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    draws = require_int("draws", draws, 1)
    seed = require_int("seed", seed, 0, allow_none=True)
    batch_size = require_int("batch_size", batch_size, 1, allow_none=True)
    n_bits = require_int("n_bits", n_bits, 1, 8, allow_none=True)
    device = resolve_device(device)
    ckpt = Path(ckpt)

    model, info = load_model(ckpt, ema=ema, device=device)
    config = info.get("config") or {}
    model_bits = checkpoint_n_bits(info, ckpt)
    if not isinstance(config.get("dataset"), Mapping):
        raise CheckpointError(f"{ckpt} has no config.dataset; not a glow-train run")
    data_cfg = eval_dataset(config["dataset"], dataset, dataset_overrides)
    shape = image_shape(data_cfg)
    if shape != tuple(model.image_shape):
        raise ConfigError(
            "dataset {} yields {}x{}x{} images but the model of {} takes {}x{}x{}; set "
            "dataset.image_size= and dataset.channels= to match".format(
                data_cfg["name"], *shape, ckpt, *model.image_shape
            )
        )
    if seed is None:
        seed = int((config.get("train") or {}).get("eval_seed", 0))
    if batch_size is None:
        batch_size = int(data_cfg.get("eval_batch_size") or 256)
    n_bits = n_bits if n_bits is not None else model_bits
    json_path, csv_path = _output_paths(ckpt, data_cfg["name"], split, out)
    if json_path.resolve() == ckpt.resolve():
        raise ConfigError(f"out={out} would overwrite the checkpoint {ckpt}")

    data = build_dataset(data_cfg, split)
    result = evaluate_bpd(
        model,
        data,
        n_bits=n_bits,
        batch_size=batch_size,
        device=device,
        seed=seed,
        draws=draws,
        num_workers=int(data_cfg.get("num_workers") or 0),
        progress=progress,
    )
    summary = {
        "bpd": result.bpd,
        "stderr": result.stderr,
        "dataset": data_cfg["name"],
        "split": split,
        "num_images": result.num_images,
        "draws": draws,
        "checkpoint": str(ckpt.resolve()),
        "step": info.get("step"),
        "seed": seed,
        "batch_size": batch_size,
        "n_bits": n_bits,
        "ema": info["ema_used"],
        "device": str(device),
        "dataset_config": data_cfg,
    }
    if per_image:
        write_atomic(csv_path, lambda tmp: _write_csv(tmp, result))
    text = json.dumps(summary, indent=2, default=str) + "\n"
    write_atomic(json_path, lambda tmp: tmp.write_text(text))
    return EvalReport(summary, result, json_path, csv_path if per_image else None)
