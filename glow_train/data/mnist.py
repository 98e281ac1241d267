"""MNIST through `torchvision.datasets.MNIST` (official 60,000 / 10,000 split)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from glow_train.data.checks import require_root
from glow_train.data.files import LOAD_ERRORS, existing_ancestor, load_failure, remove_empty_dirs
from glow_train.data.images import ImageDataset
from glow_train.data.spec import DataSource
from glow_train.data.transforms import ToUint8
from glow_train.errors import DataError

__all__ = ["SOURCE"]

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def build(cfg: dict[str, Any], split: str) -> Dataset:
    """MNIST's `split` from `dataset.root` (fetched with `dataset.download=true`)."""
    from torchvision.datasets import MNIST

    root = Path(cfg["root"]).expanduser()
    existed = existing_ancestor(root)  # to tidy up after a failed download
    raw = root / "MNIST" / "raw"
    download = bool(cfg.get("download", False))
    if not download:
        missing = [n for n in RAW_FILES if not (raw / n).is_file()]
        if missing:
            raise DataError(
                f"MNIST not found under {raw} (missing {', '.join(missing)}); set "
                f"dataset.download=true to fetch it, or point dataset.root at the folder "
                f"holding MNIST/raw/ with the four uncompressed idx files"
            )
    try:
        source = MNIST(root, train=split == "train", download=download)
    except LOAD_ERRORS as err:
        remove_empty_dirs(root, existed)
        raise DataError(load_failure("MNIST", raw, err, download)) from err
    transform = ToUint8(cfg["channels"], cfg["image_size"], fit="pad")
    return ImageDataset(source, transform, SOURCE.num_classes)


SOURCE = DataSource("mnist", build, num_classes=10, validate=require_root)
