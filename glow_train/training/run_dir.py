"""The run folder policy: never another run's folder, decided once for every rank.

A run holds an exclusive lock on its folder for its whole life
(`RunLock`: `flock` on `<run folder>/.glow-train.lock`, which the
operating system releases when the process ends however it ends, so `kill -9`
leaves no stale lock). A second run on the same folder, started at the same
moment or later, refuses in one line naming the holder's process id. Under DDP
only rank 0 locks.
"""

from __future__ import annotations

import fcntl
import os
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig

from glow_train.errors import ConfigError
from glow_train.runtime.distributed import DistInfo, broadcast_object

__all__ = ["holds_a_run", "new_run_dir", "resolve_run_dir", "RunLock", "LOCK_NAME"]

LOCK_NAME = ".glow-train.lock"


class RunLock:
    """An exclusive lock on a run folder, held from `acquire` to `release`.

    Args:
        folder: the run folder (created by `acquire` if it does not exist).
        created: the folder was created for this run (by `new_run_dir`); like a
            folder `acquire` creates, it is removed again by `release` if
            the run left nothing in it, so a failed start leaves no empty folder.
    """

    def __init__(self, folder: Path, created: bool = False):
        self.folder = folder
        self.created = created
        self.started = False  # set once the run writes into the folder (config.yaml)
        self._new_file = False
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise a `ConfigError` naming the process that holds it."""
        self.created = self.created or not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._new_file = not (self.folder / LOCK_NAME).exists()
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"run_dir={self.folder} is in use by another glow-train run (process "
                f"{holder}); wait for it to finish or choose another run_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Let the lock go. A run that never `started` leaves no trace: the lock
        file goes if it made it, and so does the folder if it made that and it is empty."""
        if self._fd is None:
            return
        if not self.started and self._new_file:
            (self.folder / LOCK_NAME).unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        if not self.started and self.created and not any(self.folder.iterdir()):
            self.folder.rmdir()


def holds_a_run(folder: Path) -> bool:
    """Whether `folder` holds a run's checkpoint (`last.pt` or `best.pt`)."""
    return (folder / "last.pt").exists() or (folder / "best.pt").exists()


def new_run_dir(base: Path) -> Path:
    """`base`, or `base_2`, `base_3`… : the first that did not exist (created here)."""
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}_{n}")


def resolve_run_dir(cfg: DictConfig, dist: DistInfo) -> tuple[Path, RunLock | None]:
    """The run folder, decided and locked on rank 0 and shared so every rank uses it.

    Never another run's folder: a new run refuses a `run_dir` that holds
    checkpoints (unless it is the folder being resumed) or that another run holds
    locked, and a default `runs/<dataset>/<time>` that already exists gets a
    `_2`, `_3`… suffix. Returns the folder and, on rank 0, its held
    `RunLock` (`None` on the other ranks).
    """
    answer: tuple[str | None, str | None] = (None, None)
    lock = None
    if dist.is_main:
        try:
            resumed = Path(cfg.ckpt).resolve().parent if cfg.ckpt is not None else None
            if cfg.run_dir is not None:
                run_dir = Path(cfg.run_dir)
                if run_dir.exists() and not run_dir.is_dir():
                    raise ConfigError(f"run_dir={run_dir} is a file; choose a folder")
                lock = RunLock(run_dir).acquire()
                if holds_a_run(run_dir) and run_dir.resolve() != resumed:
                    raise ConfigError(
                        f"run_dir={run_dir} already holds a run; resume it with "
                        f"ckpt={run_dir / 'last.pt'} or choose another run_dir"
                    )
            elif resumed is not None:
                run_dir = resumed
                lock = RunLock(run_dir).acquire()
            else:
                stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
                run_dir = new_run_dir(Path("runs") / cfg.dataset.name / stamp)
                lock = RunLock(run_dir, created=True).acquire()
            answer = (str(run_dir), None)
        except ConfigError as err:
            if lock is not None:
                lock.release()
                lock = None
            answer = (None, str(err))
    run_dir, error = broadcast_object(answer)
    if error is not None:
        raise ConfigError(error)
    return Path(run_dir), lock
