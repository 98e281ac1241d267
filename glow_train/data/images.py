"""The two dataset classes every image source returns.

Each yields `(image, label)`: `image` a `torch.uint8` tensor `(C, H, W)` in
`0..255`, `label` an `int` (`-1` where the data has no labels).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ImageDataset", "TensorImageDataset"]


class ImageDataset(Dataset):
    """Wraps a source of `(PIL image, target)` pairs into `(uint8 (C, H, W), int)`.

    Args:
        source: an indexable dataset of `(PIL.Image, target)`; `target` may be
            `None` (no label, yielded as `-1`).
        transform: PIL image -> uint8 tensor, e.g. `glow_train.data.ToUint8`.
        num_classes: number of label values, 0 when there are no labels.
    """

    def __init__(
        self, source: Any, transform: Callable[[Image.Image], Tensor], num_classes: int
    ) -> None:
        self.source = source
        self.transform = transform
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img, target = self.source[index]
        label = -1 if target is None else int(target)
        return self.transform(img), label


class TensorImageDataset(Dataset):
    """In-memory uint8 images `(N, C, H, W)` with integer labels `(N,)`."""

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise ValueError("images must be uint8 (N, C, H, W) with one label per image")
        self.images = images
        self.labels = labels
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])
