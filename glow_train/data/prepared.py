"""Image sources decoded once into a uint8 array file and read from it
(`dataset.prepared`, CelebA's option).

Decoding a JPEG, cropping and resizing it costs about a millisecond per image at
every epoch; `prepare` does it once per split into a `.npy` file of shape
`(N, H, W, C)`, uint8, named by what fixes its pixels (split, crop, size, channels),
and `PreparedImages` reads items from it through a read-only memory map: no decode,
and the loader's worker processes share the pages the operating system caches.

The file is written under the output policy of `glow_train.io.outputs`: to a
temporary file beside it and renamed when complete (`write_atomic`), so an interrupt
leaves no half-written file, and an existing file is never replaced: one that does
not hold the expected shape (other files, other settings, or truncated) is refused in
one line. Processes that prepare the same file at once (the ranks of a `torchrun`
job) take turns on a lock of its folder, so it is decoded once.
"""

from __future__ import annotations

import fcntl
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from glow_train.data.loader import make_loader
from glow_train.errors import ConfigError, DataError
from glow_train.io.outputs import write_atomic

__all__ = [
    "PreparedImages",
    "open_prepared",
    "prepare",
    "prepared_folder",
    "prepared_or_decoded",
    "prepared_path",
]

#: `dataset.prepared` values besides a folder (YAML reads a bare `off` as false)
OFF = ("off", False)


def prepared_folder(cfg: Mapping[str, Any], default: Path) -> Path | None:
    """The folder `dataset.prepared` names: `auto` -> `default` (the dataset's own
    folder), `off` -> `None` (decode every time), anything else a folder path."""
    value = cfg.get("prepared", "off")
    if value is None or value in OFF:
        return None
    if value == "auto":
        return default
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"dataset.prepared must be auto, off or a folder, got {value!r}; e.g. "
            "dataset.prepared=auto (beside the images) or dataset.prepared=off (decode)"
        )
    return Path(value).expanduser()


def prepared_path(folder: Path, name: str, split: str, cfg: Mapping[str, Any]) -> Path:
    """The file of `split`, named by everything that fixes its pixels, e.g.
    `celeba_train_crop148_64x64x3.npy`."""
    size, channels = int(cfg["image_size"]), int(cfg["channels"])
    crop = "none" if cfg.get("crop") is None else int(cfg["crop"])
    return folder / f"{name}_{split}_crop{crop}_{size}x{size}x{channels}.npy"


class PreparedImages(Dataset):
    """`(uint8 (C, H, W), -1)` items read from a prepared `(N, H, W, C)` `.npy` file.

    The memory map is opened on first use in each process (a worker process opens
    its own rather than receiving a pickled copy of the array).

    Args:
        path: the file (`open_prepared` checks it).
        shape: what it holds, `(N, H, W, C)`.
        source: the decoding dataset's own source, kept for its annotations
            (CelebA's attributes, `glow_train.sampling.latents.attribute_mask`);
            not sent to worker processes.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], source: Any = None) -> None:
        self.path, self.shape, self.source = Path(path), shape, source
        self.num_classes = 0
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None, "source": None}

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        image = np.ascontiguousarray(self._array[index].transpose(2, 0, 1))
        return torch.from_numpy(image), -1


def open_prepared(
    path: Path, shape: tuple[int, ...], option: str, source: Any = None
) -> PreparedImages:
    """The prepared file at `path`, checked to hold uint8 `shape` in full, else one
    `DataError` line (`option`: how the user named the file's folder)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            fmt = np.lib.format
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            held, _, dtype = read(f)
            found = f"{tuple(held)} {dtype}"
            complete = os.path.getsize(path) == f.tell() + dtype.itemsize * int(np.prod(held))
    except (ValueError, OSError, EOFError) as err:
        found, complete = f"no readable array ({' '.join(str(err).split())[:120]})", True
    expected = f"{shape} uint8"
    if found != expected or not complete:
        problem = " and is truncated" if found != expected and not complete else ""
        problem = f"holds {found}{problem}" if found != expected else "is truncated"
        raise DataError(
            f"the prepared file {path} ({option}) {problem}, while these images and "
            f"settings give {expected}: it was made from other files or is damaged; delete "
            "it to have it made again, or set dataset.prepared=off to decode the images"
        )
    return PreparedImages(path, shape, source)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock of `folder` (other processes preparing into it wait)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: each process prepares its own
            pass
        yield
    finally:
        os.close(fd)


def prepare(
    decoded: Dataset,
    path: Path,
    shape: tuple[int, ...],
    option: str,
    num_workers: int | str = 0,
) -> PreparedImages:
    """`decoded` as a `PreparedImages` at `path`: read from the file when it exists
    (checked by `open_prepared`, nothing decoded), else decoded once through a loader
    of `num_workers` processes and written atomically.

    Args:
        decoded: the dataset that decodes, crops and resizes each image into
            `(uint8 (C, H, W), label)`.
        path: the prepared file (`prepared_path`).
        shape: what it holds, `(N, H, W, C)`.
        option: how the user named its folder, for messages (`dataset.prepared=auto`).
        num_workers: loader processes that decode (`glow_train.data.loader.make_loader`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(path.parent):
        if not path.exists():
            write_atomic(path, lambda tmp: _decode_into(tmp, decoded, shape, num_workers))
    return open_prepared(path, shape, option, getattr(decoded, "source", None))


def _decode_into(tmp: Path, decoded: Dataset, shape: tuple[int, ...], num_workers) -> None:
    from tqdm import tqdm

    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    loader = make_loader(decoded, 256, num_workers=num_workers, persistent_workers=False)
    start = 0
    for batch in tqdm(loader, desc=f"preparing {shape[0]} images", delay=2, leave=False):
        stop = start + len(batch.x)
        array[start:stop] = batch.x.permute(0, 2, 3, 1).numpy()
        start = stop
    if start != shape[0] or tuple(batch.x.shape[1:]) != (shape[3], shape[1], shape[2]):
        raise DataError(f"decoded {start} images of {tuple(batch.x.shape[1:])}, not {shape}")
    array.flush()
    del array


def prepared_or_decoded(
    decoded: Dataset,
    path: Path | None,
    shape: tuple[int, ...],
    option: str,
    num_workers: int | str = 0,
) -> Dataset:
    """`prepare(...)`, or `decoded` itself when `dataset.prepared` is off (`path` is
    `None`); under `auto`, a folder that cannot be written is one warning, and the
    images are decoded as they are read."""
    if path is None:
        return decoded
    try:
        return prepare(decoded, path, shape, option, num_workers)
    except PermissionError as err:
        if not option.endswith("=auto"):
            raise
        warnings.warn(
            f"cannot write the prepared images into {path.parent} ({err.strerror}): "
            "decoding every image at every epoch; set dataset.prepared to a writable folder",
            stacklevel=2,
        )
        return decoded
