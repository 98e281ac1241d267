"""The built-in dataset: the 1,797 8×8 UCI handwritten digits shipped in the package
(`digits.npz`; see `DIGITS.md`). The first 1,500 are train, the other 297 test."""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from glow_train.data.images import TensorImageDataset
from glow_train.data.spec import DataSource
from glow_train.data.transforms import ToUint8

__all__ = ["SOURCE", "load_digits_arrays"]

NATIVE_SIZE = 8
NUM_TRAIN = 1500  # first 1,500 of scikit-learn's order are train, the other 297 test


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The packaged digits: uint8 images `(1797, 8, 8)` in `0..255` and labels `(1797,)`."""
    with resources.files("glow_train.data").joinpath("digits.npz").open("rb") as f:
        with np.load(f) as arrays:
            return arrays["images"], arrays["labels"]


def build(cfg: dict[str, Any], split: str) -> Dataset:
    """The bundled digits' `split` (the first 1,500 train, 297 test), resized to `cfg`."""
    images, labels = load_digits_arrays()
    part = slice(0, NUM_TRAIN) if split == "train" else slice(NUM_TRAIN, None)
    images, labels = images[part], labels[part]
    if (cfg["image_size"], cfg["channels"]) == (NATIVE_SIZE, 1):
        batch = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 8, 8) -> (N, 1, 8, 8)
    else:  # tiny: transform once at construction instead of per item
        transform = ToUint8(cfg["channels"], cfg["image_size"], fit="pad")
        batch = torch.stack([transform(Image.fromarray(a, mode="L")) for a in images])
    return TensorImageDataset(batch, torch.from_numpy(labels.astype(np.int64)), 10)


SOURCE = DataSource("digits", build, num_classes=10)
