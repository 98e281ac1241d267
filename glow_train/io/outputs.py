"""Where the commands write, what they may replace, and how a file is written.

One policy for every file `glow-sample` and `glow-eval` write (and the
checkpoints `glow-train` writes through `write_atomic`):

- **Where.** `out=` names a file (its extension says so: `grid.png`,
  `table.csv`, `eval.json`) or a folder; without `out=` the files go to the
  tool's own folders beside the checkpoint (`samples/`, `eval/<ckpt>_<...>/`),
  with names the tool chooses.
- **User files are kept.** A file the user named, or any file in a folder the user
  named, that already exists is refused unless `overwrite=true`. Files the tool
  names itself in its own folders are replaced (rerunning a command updates them).
- **Inputs are never written.** The command's own inputs (the checkpoint, the
  dataset's file or image folder, the images it reads) are refused as targets
  even with `overwrite=true`.
- **All or nothing.** Every target is checked (`Outputs.claim`) before the
  first file is written, and each file is written to a temporary file in the same
  folder and renamed over the target (`write_atomic`), so a failure or an
  interrupt leaves either the old file or the new one, never half of one.

This module depends on nothing but the standard library, so the policy can be
read and tested on its own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glow_train.errors import ConfigError

__all__ = [
    "Target",
    "Outputs",
    "write_atomic",
    "dataset_inputs",
    "sample_targets",
    "eval_targets",
    "strip_target",
    "ood_targets",
    "folder_targets",
    "claim_outputs",
]


@dataclass(frozen=True)
class Target:
    """A file a command will write.

    Attributes:
        path: where.
        own: the tool chose the name inside its own folder (`samples/`, `eval/...`),
            so an existing file there is the tool's earlier output and may be replaced.
    """

    path: Path
    own: bool


@dataclass
class Outputs:
    """The targets of one command and the inputs it must not write over.

    Args:
        option: how the user names the output on the command line (`out`).
        overwrite: the user's `overwrite=true`: replace existing files they named.
        inputs: `(file or folder, what it is)` pairs; a target equal to a file, or
            inside a folder, is refused (e.g. `(ckpt, "the checkpoint")`).
    """

    option: str = "out"
    overwrite: bool = False
    inputs: list[tuple[Path, str]] = field(default_factory=list)

    def protect(self, path: str | os.PathLike | None, what: str) -> None:
        """Add an input (`None` is ignored)."""
        if path is not None:
            self.inputs.append((Path(os.path.expanduser(str(path))), what))

    def claim(self, targets: Iterable[Target], given: Any = None) -> list[Path]:
        """Check every target before anything is written; return their paths.

        Raises:
            ConfigError: a target is one of the inputs (always), or a user-named file
                that exists (unless `overwrite`), or an existing folder.
        """
        shown = f"{self.option}={given}" if given is not None else "the output"
        paths = []
        for target in targets:
            path = target.path
            for source, what in self.inputs:
                if _same_or_inside(path, source):
                    raise ConfigError(
                        f"{shown} would write {path}, which is {what}; a command never "
                        "writes over its inputs, even with overwrite=true: name another file "
                        "or folder"
                    )
            if path.is_dir():
                raise ConfigError(f"{shown} would write {path}, which is a folder; name a file")
            if path.exists() and not target.own and not self.overwrite:
                named = given is not None and Path(os.path.expanduser(str(given))) == path
                where = f"{shown} exists" if named else f"{shown}: {path} exists"
                raise ConfigError(
                    f"{where}; pass overwrite=true to replace it, or name another file or folder"
                )
            paths.append(path)
        return paths


def _same_or_inside(path: Path, source: Path) -> bool:
    """Whether `path` is the file `source` (also through links) or lies in the folder."""
    try:
        target = path.resolve()
        resolved = source.resolve()
    except OSError:
        return False
    if source.is_dir():
        return target.is_relative_to(resolved)
    if target == resolved:
        return True
    try:
        return path.exists() and source.exists() and os.path.samefile(path, source)
    except OSError:
        return False


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, rename it to `path`.

    A failure (or an interrupt) at any moment leaves the previous `path` intact and
    no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def dataset_inputs(outputs: Outputs, dataset: Mapping[str, Any] | None) -> Outputs:
    """Protect a dataset config's files: a table's `dataset.path` and an image
    folder's `dataset.root` (a new image there would join the dataset)."""
    if not dataset:
        return outputs
    if dataset.get("path") is not None:
        outputs.protect(dataset["path"], f"the dataset's file (dataset.path={dataset['path']})")
    if dataset.get("name") == "folder" and dataset.get("root") is not None:
        outputs.protect(
            dataset["root"], f"in the dataset's folder (dataset.root={dataset['root']})"
        )
    return outputs


# ------------------------------------------------------------------------ the layouts


def _folder_or_file(out: str | os.PathLike | None, extensions: Iterable[str]) -> Path | None:
    """`out` as a file name (it ends in one of `extensions` and is no folder), else None."""
    if out is None:
        return None
    path = Path(os.path.expanduser(str(out)))
    if path.is_dir():
        return None
    return path if path.suffix.lower() in set(extensions) else None


def sample_targets(
    ckpt: Path,
    labels: list[str],
    out: str | os.PathLike | None,
    suffix: str,
    extensions: Iterable[str],
) -> list[Target]:
    """Where `glow-sample` writes one file per label (`T0.7`, `rows_T0-1`, ...).

    `out` ending in one of `extensions` is the file itself (`_<label>` is added
    before the suffix when there are several files); an existing folder, or a name
    without an extension, is a folder (files `<ckpt stem>_<label><suffix>`); `None`
    is `<checkpoint folder>/samples/`, the tool's own.

    Raises:
        ConfigError: an extension that is not one of `extensions`, or an existing file
            that is not one (neither can be written as asked).
    """
    extensions = list(extensions)
    file = _folder_or_file(out, extensions)
    if file is not None:
        if len(labels) == 1:
            return [Target(file, own=False)]
        return [Target(file.with_name(f"{file.stem}_{l}{file.suffix}"), own=False) for l in labels]
    if out is not None:
        path = Path(os.path.expanduser(str(out)))
        kind = "a .csv file" if suffix == ".csv" else "an image file name (.png, .jpg)"
        if path.is_file():
            raise ConfigError(f"out={out} is an existing file; pass a folder or {kind}")
        if path.suffix:
            if suffix == ".csv":
                raise ConfigError(
                    f"out={out}: samples of a vector model are CSV; name a .csv file or a folder"
                )
            raise ConfigError(
                f"out={out}: {path.suffix!r} is not an image format Pillow writes; name a "
                ".png, .jpg or .webp file, or a folder"
            )
        return [Target(path / f"{ckpt.stem}_{l}{suffix}", own=False) for l in labels]
    return [Target(ckpt.parent / "samples" / f"{ckpt.stem}_{l}{suffix}", own=True) for l in labels]


def strip_target(
    ckpt: Path, name: str, out: str | os.PathLike | None, extensions: Iterable[str]
) -> Target:
    """Where a latent-space strip goes: `out` an image file or a folder (default the
    tool's `<checkpoint folder>/samples/`), file `<ckpt stem>_<name>.png`."""
    return sample_targets(ckpt, [name], out, ".png", extensions)[0]


def eval_targets(
    ckpt: Path, folder_name: str, out: str | os.PathLike | None, per_image: list[str]
) -> tuple[Target, list[Target]]:
    """`eval.json` and the per-item CSV files `per_image` (names such as
    `per_image.csv`) of `glow-eval`.

    The folder is `out`, or the tool's `<checkpoint folder>/eval/<folder_name>/`;
    an `out` ending in `.json` names the JSON file itself and each CSV goes beside
    it as `<stem>_<csv name>`.

    Raises:
        ConfigError: `out` is an existing file that is not `.json`.
    """
    file = _folder_or_file(out, [".json"])
    if file is not None:
        csvs = [Target(file.with_name(f"{file.stem}_{name}"), own=False) for name in per_image]
        return Target(file, own=False), csvs
    if out is not None:
        folder = Path(os.path.expanduser(str(out)))
        if folder.is_file():
            raise ConfigError(f"out={out} is an existing file; pass a folder or a .json file name")
        own = False
    else:
        folder, own = ckpt.parent / "eval" / folder_name, True
    return Target(folder / "eval.json", own), [Target(folder / n, own) for n in per_image]


def ood_targets(
    ckpt: Path, name: str, out: str | os.PathLike | None
) -> tuple[Target, list[Target]]:
    """`glow-eval ood=`: `eval.json`, `per_image.csv` and `ood_per_image.csv` in
    `out` or the tool's `<checkpoint folder>/eval/<ckpt stem>_ood_<name>/`."""
    return eval_targets(
        ckpt, f"{ckpt.stem}_ood_{name}", out, ["per_image.csv", "ood_per_image.csv"]
    )


def folder_targets(
    ckpt: Path, folder_name: str, out: str | os.PathLike | None, names: list[str]
) -> list[Target]:
    """The files `names` of one result (`forecast.csv` and `forecast.png`;
    `backtest.json`, `.csv` and `.png`) in `out` or the tool's
    `<checkpoint folder>/<folder_name>/`. An `out` with the first name's extension
    names that file, and the others go beside it with its stem (`out=fc.csv`:
    `fc.csv` and `fc.png`).

    Raises:
        ConfigError: `out` is an existing file without that extension, or a name with
            another extension.
    """
    first = Path(names[0]).suffix
    file = _folder_or_file(out, [first])
    if file is not None:
        return [Target(file.with_suffix(Path(name).suffix), own=False) for name in names]
    if out is None:
        return [Target(ckpt.parent / folder_name / name, own=True) for name in names]
    folder = Path(os.path.expanduser(str(out)))
    if folder.is_file():
        raise ConfigError(f"out={out} is an existing file; pass a folder or a {first} file name")
    if folder.suffix:
        raise ConfigError(f"out={out}: name a {first} file or a folder (without an extension)")
    return [Target(folder / name, own=False) for name in names]


def claim_outputs(
    targets: list[Target],
    out: Any,
    overwrite: bool,
    ckpt: Path,
    datasets: Iterable[Mapping[str, Any] | None] = (),
    files: Iterable[tuple[Any, str]] = (),
) -> list[Path]:
    """`Outputs.claim` of `targets` with a command's usual inputs protected: the
    checkpoint, each dataset config's files and further `(file, what it is)` pairs."""
    outputs = Outputs(overwrite=bool(overwrite))
    outputs.protect(ckpt, "the checkpoint")
    for dataset in datasets:
        dataset_inputs(outputs, dataset)
    for path, what in files:
        outputs.protect(path, what)
    return outputs.claim(targets, out)
