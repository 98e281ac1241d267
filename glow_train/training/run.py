"""`train(cfg)`: one training job end to end, from a config to a finished run folder.

The run folder holds `config.yaml`, `last.pt` / `best.pt` (see
`glow_train.io.checkpoint`), TensorBoard events under `tb/` and
`samples.png`. Every check of the configuration runs before anything is
created, so a bad setting or missing data leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import Dataset

from glow_train.errors import ConfigError
from glow_train.evaluation.figures import density_of
from glow_train.io.checkpoint import load_checkpoint, resolve_checkpoint
from glow_train.io.outputs import write_atomic
from glow_train.runtime.distributed import DistInfo, cleanup_distributed, setup_distributed
from glow_train.runtime.memory import freed_memory_kept
from glow_train.training.checks import check_config
from glow_train.training.run_dir import resolve_run_dir
from glow_train.training.schedule import reached_limits
from glow_train.training.sizing import describe_chosen
from glow_train.training.trainer import Trainer, TrainResult

__all__ = ["train", "absolute_data_paths"]

#: dataset keys that name files or folders: stored resolved against the folder the run
#: started in, so the checkpoint resumes and evaluates from anywhere
PATH_KEYS = ("path", "root")


def absolute_data_paths(cfg: DictConfig) -> DictConfig:
    """`cfg` with `dataset.path` / `dataset.root` made absolute (`~` expanded)."""
    with open_dict(cfg):
        for key in PATH_KEYS:
            value = cfg.dataset.get(key)
            if value is not None:
                cfg.dataset[key] = os.path.abspath(os.path.expanduser(str(value)))
    return cfg


def train(
    cfg: DictConfig | dict,
    dist: DistInfo | None = None,
    train_set: Dataset | None = None,
    test_set: Dataset | None = None,
) -> TrainResult:
    """Train the model `cfg` describes (the composed `train.yaml`, or an equal dict).

    Resumes from `cfg.ckpt` when set (model, optimiser, schedule, EMA, step and
    data position). Under torchrun the process group is set up here. `train_set`
    and `test_set` replace the datasets named in `cfg.dataset` (same item shape).
    """
    cfg = absolute_data_paths(check_config(cfg))
    if cfg.ckpt is not None:  # a run folder resumes its last.pt
        cfg.ckpt = str(resolve_checkpoint(cfg.ckpt, ("last.pt",)))
    own_group = dist is None
    dist = dist or setup_distributed(cfg.device)
    lock = None
    try:
        state = load_checkpoint(cfg.ckpt) if cfg.ckpt is not None else None
        # the trainer resolves an auto max_steps, and its loop then stops by itself
        at_limit = (
            state is not None
            and cfg.train.max_steps != "auto"
            and reached_limits(cfg.train, state["step"], state["epoch"])
        )
        # a run stopped by a signal at its last step still owes its final figures
        if at_limit and state.get("finished", True):
            raise ConfigError(
                f"nothing to do: {cfg.ckpt} is at step {state['step']} (epoch "
                f"{state['epoch']}), already at train.max_steps={cfg.train.max_steps} / "
                f"train.max_epochs={cfg.train.max_epochs}; raise the limit to train further"
            )
        # Settings, data and model first: a bad setting or missing data must not leave
        # an empty run folder behind.
        trainer = Trainer(cfg, dist, None, train_set, test_set)
        run_dir, lock = resolve_run_dir(cfg, dist)
        trainer.run_dir = run_dir
        trainer.prepare(state, Path(cfg.ckpt) if state is not None else None)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.started = True
            cfg = trainer.cfg  # with any auto setting resolved
            write_atomic(
                run_dir / "config.yaml", lambda tmp: OmegaConf.save(cfg, tmp, resolve=True)
            )
            effective = trainer.batch_size * dist.world_size
            start = f"resuming {cfg.ckpt} at step {trainer.step}" if state else "training"
            chosen = [trainer.precision.describe()]  # what was picked for the device
            if trainer.spec.kind == "image":
                chosen.append("channels_last maps")
            if dist.device.type == "cpu" and freed_memory_kept():
                chosen.append("freed memory kept")
            if dist.device.type == "cuda" and trainer.precision.name == "fp32":
                chosen.append("TF32 products" if cfg.train.tf32 else "TF32 off")
            if trainer.compile_seconds is not None:
                mode = cfg.train.compile_mode
                chosen.append(f"compiled per coupling ({mode}) in {trainer.compile_seconds:.1f} s")
            if trainer.auto_chosen:
                chosen.append(
                    f"auto for {len(trainer.train_set)} training items: "
                    + describe_chosen(trainer.auto_chosen)
                )
            items = "images" if trainer.spec.kind == "image" else "items"
            if density_of(trainer.spec):
                items += f": {density_of(trainer.spec)}"
            val = f"{len(trainer.val_set)} val / " if trainer.val_set is not None else ""
            if trainer.model.num_classes > 0:
                items += f", {trainer.model.num_classes} classes: a model of p(x|y)"
                if trainer.class_weight > 0:
                    items += f"; train bpd includes {trainer.class_weight:g} x class bits"
            preset = f"preset {cfg.preset}" if cfg.preset else "no preset"
            trainer.monitor.log(
                f"{start}: {cfg.dataset.name}, {preset} ({len(trainer.train_set)} train / {val}"
                f"{len(trainer.test_set)} test {items}), "
                f"{sum(p.numel() for p in trainer.model.parameters()):,} parameters, "
                f"batch {trainer.batch_size} x {dist.world_size} process(es) = {effective}, "
                f"device {dist.device}, {', '.join(chosen)}; run folder {run_dir}"
            )
        return trainer.fit()
    finally:
        if lock is not None:
            lock.release()
        if own_group:
            cleanup_distributed()
