"""CIFAR-10 through `torchvision.datasets.CIFAR10` (official 50,000 / 10,000 split)."""

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


def build(cfg: dict[str, Any], split: str) -> Dataset:
    """CIFAR-10's `split` from `dataset.root` (fetched with `dataset.download=true`)."""
    from torchvision.datasets import CIFAR10

    def missing(root: Path, folder: Path) -> str | None:
        names = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
        absent = [n for n in names if not (folder / n).is_file()]
        if len(absent) == len(names):
            return (
                f"CIFAR-10 not found under {folder} (dataset.root={root}); set "
                f"dataset.download=true to fetch it or point dataset.root at the folder "
                f"holding cifar-10-batches-py"
            )
        if absent:
            return (
                f"CIFAR-10 under {folder} is incomplete (missing {', '.join(absent)}); delete "
                f"the folder and set dataset.download=true to fetch a fresh copy"
            )
        return None

    source = open_torchvision(
        cfg,
        "CIFAR-10",
        CIFAR10.base_folder,
        missing,
        lambda root, download: CIFAR10(root, train=split == "train", download=download),
        corrupted=(
            "CIFAR-10 under {folder} fails its MD5 checksum (a damaged or partial "
            "copy); delete the folder and set dataset.download=true to fetch a fresh copy"
        ),
    )
    transform = ToUint8(cfg["channels"], cfg["image_size"], fit="pad")
    return ImageDataset(source, transform, SOURCE.num_classes)


SOURCE = DataSource("cifar10", build, num_classes=10, validate=require_root)
