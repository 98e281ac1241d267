"""Any directory of images (recursive), with a train/test split by file-name hash.

With `dataset.classes=true` the first level of sub-folders are the classes
(`root/<class>/**/*.png`, labels by the sorted folder names, as torchvision's
`ImageFolder` numbers them); otherwise every image has the label -1 (none).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from glow_train.data.checks import require_key
from glow_train.data.spec import DataSource, DataSpec, image_spec
from glow_train.data.transforms import ToUint8
from glow_train.errors import ConfigError, DataError, show

__all__ = ["SOURCE", "ImageFolder", "IMAGE_EXTENSIONS", "class_folders"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})


def _test_bucket(relative_path: str) -> float:
    """A stable number in [0, 1) from a file's relative path (for the train/test split)."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def readable(path: Path) -> bool:
    """Whether the file decodes fully as an image (catches truncated files)."""
    try:
        with Image.open(path) as img:
            # JPEG: decode at reduced DCT scale; still reads every byte of the stream.
            img.draft(img.mode, (64, 64))
            img.load()
        return True
    except Exception:  # PIL raises many kinds (OSError, SyntaxError, ValueError, ...)
        return False


def class_folders(root: str | os.PathLike) -> list[str]:
    """The class names of a folder of class sub-folders: its sub-directories, sorted."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (dataset.root)")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(
            f"dataset.classes=true but {root} has no sub-folders; put each class's images "
            "in <root>/<class>/ or set dataset.classes=false"
        )
    return names


class ImageFolder(Dataset):
    """Every image under a directory (recursive), with a deterministic train/test split.

    A file is in the test split when a hash of its path relative to `root` (with
    `/` separators) falls below `test_fraction`, so the split depends only on file
    names: not on listing order, and adding or removing files never moves others
    between splits. The test share is therefore `test_fraction` on average, not
    exactly.

    Each file of the requested split is decoded once at construction (JPEGs at
    reduced scale) so truncated or unreadable files are skipped up front, with one
    warning naming them. This costs about 3 ms per 1024x1024 JPEG on one CPU core
    (some 90 s for CelebA-HQ's 30,000 images), paid by every process that builds it.
    It relies on Pillow's default `ImageFile.LOAD_TRUNCATED_IMAGES = False`.

    Args:
        root: the directory.
        split: `"train"` or `"test"`.
        test_fraction: share of files (by hash) held out for `"test"`, in `[0, 1)`.
        transform: PIL image -> uint8 tensor.
        classes: label each image by its first-level sub-folder (`class_folders`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        test_fraction: float,
        transform: Callable[[Image.Image], Tensor],
        classes: bool = False,
    ) -> None:
        self.root = Path(root).expanduser()
        self.transform = transform
        self.class_names = class_folders(self.root) if classes else []
        self.num_classes = len(self.class_names)
        if not self.root.is_dir():
            where = "" if self.root.is_absolute() else f", relative to {Path.cwd()}"
            raise DataError(
                f"image folder {self.root} does not exist (dataset.root{where}); "
                f"pass dataset.root=<a directory of images>"
            )
        files = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise DataError(
                f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {self.root} "
                f"(dataset.root); point dataset.root at a directory of images"
            )
        want_test = split == "test"
        chosen = [
            p
            for p in files
            if (_test_bucket(p.relative_to(self.root).as_posix()) < test_fraction) == want_test
        ]
        usable = [readable(p) for p in chosen]
        self.files: list[Path] = [p for p, ok in zip(chosen, usable, strict=True) if ok]
        skipped = [
            p.relative_to(self.root).as_posix()
            for p, ok in zip(chosen, usable, strict=True)
            if not ok
        ]
        if skipped:
            shown = ", ".join(skipped[:20])
            if len(skipped) > 20:
                shown += f" and {len(skipped) - 20} more"
            warnings.warn(
                f"skipped {len(skipped)} unreadable or truncated image file(s) under "
                f"{self.root}: {shown}",
                stacklevel=3,
            )
        self.labels = [self._label(p) for p in self.files]
        if not self.files:
            if chosen:
                reason = "no readable image"
            else:
                shown = show(test_fraction)
                reason = f"no image falls in the {split} split (dataset.test_fraction={shown})"
            raise DataError(
                f"{reason} among {len(files)} image file(s) under {self.root} (dataset.root); "
                f"add images or adjust dataset.test_fraction"
            )

    def _label(self, path: Path) -> int:
        if not self.class_names:
            return -1
        parts = path.relative_to(self.root).parts
        if len(parts) < 2 or parts[0] not in self.class_names:
            raise DataError(
                f"{path} is not inside a class sub-folder of {self.root} "
                "(dataset.classes=true); move it into <root>/<class>/ or set dataset.classes=false"
            )
        return self.class_names.index(parts[0])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        with Image.open(self.files[index]) as img:
            img.load()
            return self.transform(img), self.labels[index]


def validate(cfg: dict[str, Any]) -> None:
    """Check a `dataset=folder` config without reading the folder.

    Raises:
        ConfigError: no `dataset.root`.
    """
    if cfg.get("root") is None:
        raise ConfigError(
            "dataset.root is required for dataset=folder; pass dataset.root=/path/to/images"
        )
    fraction = require_key(cfg, "test_fraction")
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"dataset.test_fraction must be in [0, 1), got {fraction}")


def build(cfg: dict[str, Any], split: str) -> Dataset:
    """The `split` of the images under `dataset.root` (a fixed fraction held out for test)."""
    transform = ToUint8(cfg["channels"], cfg["image_size"], fit="resize")
    classes = bool(cfg.get("classes"))
    return ImageFolder(cfg["root"], split, float(cfg["test_fraction"]), transform, classes)


def describe(cfg: dict[str, Any], num_classes: int) -> DataSpec:
    """The image spec, with as many classes as class sub-folders when `classes`."""
    return image_spec(cfg, len(class_folders(cfg["root"])) if cfg.get("classes") else 0)


SOURCE = DataSource("folder", build, num_classes=0, validate=validate, describe=describe)
