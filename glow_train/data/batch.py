"""The batch type every stage passes around: inputs and optional labels.

A DataLoader built by `glow_train.data.make_loader` yields `Batch`
objects; ActNorm initialisation, the training step, evaluation and sampling take
them, so labels (for class-conditional models) travel with the data instead of
being dropped at the first function that only wanted images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Batch", "collate"]


@dataclass
class Batch:
    """`x`: the data, `(B, *shape)` (uint8 images or float vectors as the dataset
    yields them); `y`: `(B,)` int64 labels, `-1` where an item has none."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch on `device`."""
        return Batch(
            self.x.to(device, non_blocking=non_blocking),
            self.y.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Called by the DataLoader when `pin_memory=True`."""
        return Batch(self.x.pin_memory(), self.y.pin_memory())


def collate(items: Sequence[tuple[Tensor, int]]) -> Batch:
    """`[(x_i, label_i), ...]` (a dataset's items) -> one `Batch`."""
    xs, ys = zip(*items, strict=True)
    return Batch(torch.stack(xs), torch.tensor(ys, dtype=torch.int64))
