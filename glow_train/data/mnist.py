"""MNIST through ``torchvision.datasets.MNIST`` (official 60,000 / 10,000 split)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from glow_train.data.checks import require_root
from glow_train.data.files import open_torchvision
from glow_train.data.images import ImageDataset
from glow_train.data.spec import DataSource
from glow_train.data.transforms import ToUint8

__all__ = ["SOURCE"]

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _missing(root: Path, raw: Path) -> str | None:
    missing = [n for n in RAW_FILES if not (raw / n).is_file()]
    if missing:
        return (
            f"MNIST not found under {raw} (missing {', '.join(missing)}); set "
            f"dataset.download=true to fetch it, or point dataset.root at the folder "
            f"holding MNIST/raw/ with the four uncompressed idx files"
        )
    return None


def build(cfg: dict[str, Any], split: str) -> Dataset:
    from torchvision.datasets import MNIST

    source = open_torchvision(
        cfg,
        "MNIST",
        Path("MNIST", "raw"),
        _missing,
        lambda root, download: MNIST(root, train=split == "train", download=download),
    )
    transform = ToUint8(cfg["channels"], cfg["image_size"], fit="pad")
    return ImageDataset(source, transform, SOURCE.num_classes)


SOURCE = DataSource("mnist", build, num_classes=10, validate=require_root)
