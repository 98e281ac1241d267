"""The DataLoader factory shared by training, evaluation and ActNorm initialisation."""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from glow_train.data.batch import collate

__all__ = ["make_loader", "resolve_workers"]


def resolve_workers(value: int | str | None) -> int:
    r"""`dataset.num_workers` as a number of loader processes.

    `auto` follows the cores this process may run on: $\min(4, \text{cores} - 1)$, so
    that the workers and the training process share the machine (0 on one core: the
    items load in the calling process); an integer is taken as given.

    Args:
        value: `auto`, an integer $\ge 0$, or `None` (0).

    Returns:
        The number of worker processes.
    """
    if value is None:
        return 0
    if value == "auto":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return max(0, min(4, cores - 1))
    return int(value)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    drop_last: bool = False,
    num_workers: int | str = 0,
    device: str | torch.device = "cpu",
    sampler: Sampler | Iterable | None = None,
    batch_sampler: Sampler | Iterable | None = None,
    persistent_workers: bool = True,
) -> DataLoader:
    """A DataLoader over `dataset` yielding `Batch` objects
    (`x`: the stacked items, e.g. uint8 `(B, C, H, W)`; `y`: int64 `(B,)`).

    The order is the sampler's (the trainer's resumable, rank-sharded one) or the
    dataset's own; nothing is shuffled here.

    Args:
        dataset: e.g. from `glow_train.data.build_dataset`.
        batch_size: items per batch (per process); ignored with `batch_sampler`.
        drop_last: drop a final incomplete batch.
        num_workers: loader worker processes (0 loads in the calling process), or
            `auto` (`resolve_workers`).
        device: where the batches go; memory is pinned when it is a CUDA device.
        sampler: index sampler, e.g. a distributed or resumable one from the trainer.
        batch_sampler: yields lists of indices; excludes `batch_size`, `sampler`
            and `drop_last`.
        persistent_workers: keep workers alive between epochs (only when
            `num_workers > 0`).
    """
    num_workers = resolve_workers(num_workers)
    common = {
        "num_workers": num_workers,
        "pin_memory": torch.device(device).type == "cuda",
        "persistent_workers": persistent_workers and num_workers > 0,
        "collate_fn": collate,
    }
    if batch_sampler is not None:
        if drop_last or sampler is not None:
            raise ValueError("batch_sampler excludes drop_last and sampler")
        return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common
    )
