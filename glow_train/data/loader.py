"""The DataLoader factory shared by training, evaluation and sampling."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["make_loader"]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    sampler: Sampler | Iterable | None = None,
    batch_sampler: Sampler | Iterable | None = None,
    persistent_workers: bool = True,
) -> DataLoader:
    """A DataLoader over ``dataset`` yielding ``(uint8 (B, C, H, W), int64 (B,))`` batches.

    Args:
        dataset: e.g. from :func:`glow_train.data.build_dataset`.
        batch_size: images per batch (per process); ignored with ``batch_sampler``.
        shuffle: reshuffle every epoch (with the global torch RNG). Must be False when
            a ``sampler`` or ``batch_sampler`` is given: the sampler decides the order.
        drop_last: drop a final incomplete batch.
        num_workers: loader worker processes (0 loads in the calling process).
        device: where the batches go; memory is pinned when it is a CUDA device.
        sampler: index sampler, e.g. a distributed or resumable one from the trainer.
        batch_sampler: yields lists of indices; excludes ``batch_size``, ``shuffle``,
            ``sampler`` and ``drop_last``.
        persistent_workers: keep workers alive between epochs (only when
            ``num_workers > 0``).
    """
    common = {
        "num_workers": num_workers,
        "pin_memory": torch.device(device).type == "cuda",
        "persistent_workers": persistent_workers and num_workers > 0,
    }
    if batch_sampler is not None:
        if shuffle or drop_last or sampler is not None:
            raise ValueError("batch_sampler excludes shuffle, drop_last and sampler")
        return DataLoader(dataset, batch_sampler=batch_sampler, **common)
    if shuffle and sampler is not None:
        raise ValueError("shuffle=True conflicts with a sampler; let the sampler shuffle")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        drop_last=drop_last,
        **common,
    )
