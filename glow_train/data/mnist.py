"""MNIST through `torchvision.datasets.MNIST` (official 60,000 / 10,000 split).

`MNIST/raw/` may hold the four idx files or their `.gz` (as published): a `.gz`
whose idx file is missing is decompressed beside it on first use, as torchvision's
own download does, and the `.gz` is kept.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from glow_train.data.checks import require_root
from glow_train.data.files import open_torchvision
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


def _missing(root: Path, raw: Path) -> str | None:
    """What is missing under `raw` once each lone `.gz` is decompressed; `None`: nothing."""
    for name in RAW_FILES:
        _decompress(raw / name)
    missing = [n for n in RAW_FILES if not (raw / n).is_file()]
    if missing:
        return (
            f"MNIST not found under {raw} (missing {', '.join(missing)}); set "
            f"dataset.download=true to fetch it, or point dataset.root at the folder "
            f"holding MNIST/raw/ with the four idx files or their .gz"
        )
    return None


def build(cfg: dict[str, Any], split: str) -> Dataset:
    """MNIST's `split` from `dataset.root` (fetched with `dataset.download=true`)."""
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


def _decompress(idx: Path) -> None:
    """Write `idx` from `idx.gz` when only the `.gz` is there (atomically: a partial
    file never takes the idx file's name).

    Raises:
        DataError: the `.gz` is not a readable gzip file.
    """
    packed = idx.with_name(idx.name + ".gz")
    if idx.exists() or not packed.is_file():
        return
    partial = idx.with_name(f".{idx.name}.partial")
    try:
        with gzip.open(packed, "rb") as source, open(partial, "wb") as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)
        os.replace(partial, idx)
    except (OSError, EOFError, zlib.error) as err:
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot decompress {packed}: {err}; download it again") from err


SOURCE = DataSource("mnist", build, num_classes=10, validate=require_root)
