"""What the torchvision-backed sources share: their load errors and the tidy-up after
a failed download."""

from __future__ import annotations

import pickle
from pathlib import Path

__all__ = ["LOAD_ERRORS", "existing_ancestor", "remove_empty_dirs", "load_failure"]

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
