"""CelebA (aligned faces) through `torchvision.datasets.CelebA`: its train and test
partitions, centre-cropped and resized; no labels (its targets are attribute vectors).

With `dataset.prepared` (`auto`: a file beside the images; a folder; `off`) each split
is decoded once into a uint8 array file and read from it (`glow_train.data.prepared`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from glow_train.data.checks import int_key, require_root
from glow_train.data.files import open_torchvision
from glow_train.data.images import ImageDataset
from glow_train.data.prepared import prepared_folder, prepared_or_decoded, prepared_path
from glow_train.data.spec import DataSource
from glow_train.data.transforms import ToUint8

__all__ = ["SOURCE"]

LIST_FILES = (
    "list_eval_partition.txt",
    "identity_CelebA.txt",
    "list_attr_celeba.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
)


def validate(cfg: dict[str, Any]) -> None:
    """Check a `dataset=celeba` config (`root`, `crop`, `prepared`) without reading
    the files."""
    require_root(cfg)
    if cfg.get("crop") is not None:
        int_key(cfg, "crop", 1)
    prepared_folder(cfg, Path(cfg["root"]))


def _missing(root: Path, folder: Path) -> str | None:
    missing = [n for n in LIST_FILES if not (folder / n).is_file()]
    if not (folder / "img_align_celeba").is_dir():
        missing.insert(0, "img_align_celeba/")
    if missing:
        return (
            f"CelebA not found under {folder} (missing {', '.join(missing)}); torchvision's "
            f"Google Drive download is unreliable, so download the aligned images "
            f"(img_align_celeba.zip, extracted to {folder / 'img_align_celeba'}) and the "
            f"five list/identity .txt files from the CelebA website into {folder}, "
            f"or point dataset.root at the folder that holds celeba/"
        )
    return None


def build(cfg: dict[str, Any], split: str) -> Dataset:
    """CelebA's `split` from `dataset.root` (fetched with `dataset.download=true`)."""
    from torchvision.datasets import CelebA

    source = open_torchvision(
        cfg,
        "CelebA",
        CelebA.base_folder,
        _missing,
        # target_type=[]: CelebA's targets are attribute vectors, not class labels.
        lambda root, download: CelebA(root, split=split, target_type=[], download=download),
        corrupted=(
            "CelebA files under {folder} fail their MD5 checksums (damaged or different "
            "versions of the annotation .txt files); download them again from the CelebA "
            "website"
        ),
    )
    transform = ToUint8(cfg["channels"], cfg["image_size"], fit="resize", crop=cfg.get("crop"))
    decoded = ImageDataset(source, transform, SOURCE.num_classes)
    folder = prepared_folder(cfg, Path(cfg["root"]).expanduser() / CelebA.base_folder)
    path = None if folder is None else prepared_path(folder, "celeba", split, cfg)
    size, channels = int(cfg["image_size"]), int(cfg["channels"])
    option = f"dataset.prepared={cfg.get('prepared') or 'off'}"
    shape = (len(decoded), size, size, channels)
    return prepared_or_decoded(decoded, path, shape, option, cfg.get("num_workers") or 0)


SOURCE = DataSource("celeba", build, num_classes=0, validate=validate)
