"""The run folder policy: never another run's folder, decided once for every rank."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig

from glow_train.distributed import DistInfo, broadcast_object
from glow_train.errors import ConfigError

__all__ = ["holds_a_run", "new_run_dir", "resolve_run_dir"]


def holds_a_run(folder: Path) -> bool:
    return (folder / "last.pt").exists() or (folder / "best.pt").exists()


def new_run_dir(base: Path) -> Path:
    """``base``, or ``base_2``, ``base_3``… : the first that did not exist (created here)."""
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}_{n}")


def resolve_run_dir(cfg: DictConfig, dist: DistInfo) -> Path:
    """The run folder, decided on rank 0 and shared so every rank uses the same one.

    Never another run's folder: a new run refuses a ``run_dir`` that holds
    checkpoints (unless it is the folder being resumed), and a default
    ``runs/<dataset>/<time>`` that already exists gets a ``_2``, ``_3``… suffix.
    """
    answer: tuple[str | None, str | None] = (None, None)
    if dist.is_main:
        try:
            resumed = Path(cfg.ckpt).resolve().parent if cfg.ckpt is not None else None
            if cfg.run_dir is not None:
                run_dir = Path(cfg.run_dir)
                if run_dir.exists() and not run_dir.is_dir():
                    raise ConfigError(f"run_dir={run_dir} is a file; choose a folder")
                if holds_a_run(run_dir) and run_dir.resolve() != resumed:
                    raise ConfigError(
                        f"run_dir={run_dir} already holds a run; resume it with "
                        f"ckpt={run_dir / 'last.pt'} or choose another run_dir"
                    )
            elif resumed is not None:
                run_dir = resumed
            else:
                stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
                run_dir = new_run_dir(Path("runs") / cfg.dataset.name / stamp)
            answer = (str(run_dir), None)
        except ConfigError as err:
            answer = (None, str(err))
    run_dir, error = broadcast_object(answer)
    if error is not None:
        raise ConfigError(error)
    return Path(run_dir)
