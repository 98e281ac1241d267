"""What the torchvision-backed sources share: opening one (`open_torchvision`), their
load errors and the tidy-up after a failed download."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from glow_train.errors import DataError

__all__ = [
    "LOAD_ERRORS",
    "existing_ancestor",
    "remove_empty_dirs",
    "load_failure",
    "open_torchvision",
]

# Exceptions torchvision's dataset classes raise for missing, corrupt or undownloadable
# files (URLError is an OSError; idx parsing fails with AssertionError).
LOAD_ERRORS = (
    RuntimeError,
    OSError,
    ValueError,
    AssertionError,
    EOFError,
    KeyError,
    pickle.UnpicklingError,
)


def existing_ancestor(path: Path) -> Path:
    """`path` or its closest existing parent (what to tidy up to after a failure)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def remove_empty_dirs(path: Path, stop: Path) -> None:
    """Remove `path` and its parents up to (not including) `stop` while they are empty:
    the folders a failed download created and left with nothing in them. Nothing is
    touched when `path` existed before (`stop == path`)."""
    if stop == path or not path.is_dir():
        return
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    while path != stop and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


def load_failure(what: str, where: Path, err: BaseException, download: bool) -> str:
    """One short line for a torchvision load failure (its messages can span lines)."""
    reason = " ".join(str(err).split()) or type(err).__name__
    if len(reason) > 300:
        reason = reason[:297] + "..."
    if download:
        return (
            f"could not download or read {what} into {where}: {reason}; check the network, "
            f"or fetch the files by hand and set dataset.download=false"
        )
    return f"could not read {what} from {where}: {reason}; the files look damaged, fetch again"


def open_torchvision(
    cfg: Mapping[str, Any],
    what: str,
    folder: str | Path,
    missing: Callable[[Path, Path], str | None],
    open_source: Callable[[Path, bool], Any],
    corrupted: str | None = None,
) -> Any:
    """A torchvision dataset under `dataset.root`, or one `DataError` line.

    Without `dataset.download`, `missing(root, folder)` first says what is not there
    (`None`: all is). A load that fails removes the empty folders a failed download
    left behind, then names the failure (`load_failure`).

    Args:
        cfg: the dataset config (`root`, `download`).
        what: the dataset's name in messages, e.g. `CIFAR-10`.
        folder: where its files are, relative to the root.
        missing: `(root, folder) -> ` the message for files that are not there, or `None`.
        open_source: `(root, download) -> ` the torchvision dataset.
        corrupted: the message for files that fail their checksums (without
            `dataset.download`), `{folder}` standing for the folder; `None`: the
            general one.

    Returns:
        What `open_source` returned.
    """
    root = Path(cfg["root"]).expanduser()
    existed = existing_ancestor(root)  # to tidy up after a failed download
    folder = root / folder
    download = bool(cfg.get("download", False))
    if not download:
        problem = missing(root, folder)
        if problem:
            raise DataError(problem)
    try:
        return open_source(root, download)
    except LOAD_ERRORS as err:
        remove_empty_dirs(root, existed)
        if corrupted is not None and not download and "corrupted" in str(err):
            raise DataError(corrupted.format(folder=folder)) from err
        raise DataError(load_failure(what, folder, err, download)) from err
