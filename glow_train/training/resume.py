"""How a `glow-train` command line continues a run: `ckpt=<file>` (the checkpoint's
config plus this command line's overrides), `ckpt=auto` (a requeued job's own
folder). (The figure a finished task returns to a Hydra sweeper is
`glow_train.cli.train.sweep_objective`.)"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from glow_train.io.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from glow_train.training.sizing import AUTO, AUTO_KEYS

__all__ = ["resume_config", "stored_choices", "auto_resume", "finished_run"]


def resume_config(cfg: DictConfig, overrides: list[str], groups: tuple[str, ...]) -> DictConfig:
    """The config of a resumed run: the checkpoint's, plus this command line's overrides.

    A plain `glow-train ckpt=.../last.pt` continues the run as it was configured
    (whatever the defaults are now); `train.max_steps=...` and other `key=value`
    overrides still apply. Choosing another entry of `groups` (dataset, model,
    experiment) would make a different run, so it is refused; naming the run's own
    (`dataset=csv` for a table's run) is allowed, and lets this command line set the
    keys of that group's schema (`model.prior=...` of a 1-D Glow).
    """
    ckpt = resolve_checkpoint(cfg.ckpt, ("last.pt",))
    state = load_checkpoint(ckpt, mmap=True)
    stored = stored_choices(state["config"])
    chosen = [
        o
        for o in overrides
        if (group := o.split("=", 1)[0].lstrip("+~")) in groups
        and stored.get(group) != o.split("=", 1)[-1]
    ]
    if chosen:
        raise CheckpointError(
            f"cannot change {', '.join(chosen)} when resuming {cfg.ckpt}; "
            "start a new run instead (without ckpt=)"
        )
    base = OmegaConf.create(state["config"])
    extra = [
        o
        for o in overrides
        if not o.startswith("ckpt=") and o.split("=", 1)[0].lstrip("+~") not in groups
    ]
    merged = OmegaConf.merge(base, OmegaConf.from_dotlist([o.lstrip("+") for o in extra]))
    with open_dict(merged):
        merged.ckpt = str(ckpt)
        merged.run_dir = cfg.run_dir if cfg.run_dir is not None else None
    return merged


def stored_choices(config: dict) -> dict[str, str]:
    """The group entries a stored run config was composed from: its dataset, model and
    preset names (`{"dataset": "csv", "model": "glow1d", "preset": "csv"}`)."""
    choices = {}
    for group in ("dataset", "model"):
        name = (config.get(group) or {}).get("name")
        if name is not None:
            choices[group] = str(name)
    if config.get("preset") is not None:
        choices["preset"] = str(config["preset"])
    return choices


def auto_resume(cfg: DictConfig) -> tuple[DictConfig, dict | None]:
    """`ckpt=auto`: resume `run_dir/last.pt` when it exists, else start fresh there;
    the config, and the checkpoint read (`None` for a fresh start) for
    `finished_run`.

    The same command continues a requeued job: the config is this command line's (the
    trainer refuses a checkpoint of another model), not the checkpoint's, except that a
    setting this command line leaves `auto` takes the value the run chose (so a run
    resumes the same after the rules of `auto`, or the preset's choice, changed).
    """
    if cfg.run_dir is None:
        raise CheckpointError(
            "ckpt=auto resumes the run folder's last.pt: give run_dir= (under -m each job "
            "has its own folder)"
        )
    last = Path(cfg.run_dir) / "last.pt"
    state = load_checkpoint(last, mmap=True) if last.is_file() else None
    with open_dict(cfg):
        cfg.ckpt = str(last) if state is not None else None
        if state is not None:
            stored = OmegaConf.create(state["config"])
            for key in AUTO_KEYS:
                section, name = key.split(".")
                chosen = (stored.get(section) or {}).get(name)
                if (cfg.get(section) or {}).get(name) == AUTO and chosen not in (None, AUTO):
                    cfg[section][name] = chosen
    return cfg, state


def finished_run(cfg: DictConfig, state: dict) -> tuple[str, float | None] | None:
    """For `ckpt=auto` on a run that already ended (its `last.pt`, read as `state`,
    is at the limit and holds the final figures): one line saying so and the figure a
    sweeper gets; else `None` (the run resumes)."""
    from glow_train.training.schedule import reached_limits

    if not state.get("finished", True):
        return None
    if not reached_limits(cfg.train, state["step"], state["epoch"]):
        return None
    split = state.get("selection", "test")
    value = state.get("last_val_score") if split == "val" else state.get("last_test_score")
    shown = f"; {split} {state.get('metric', 'bpd')} {value:.4f}" if value is not None else ""
    line = (
        f"{Path(cfg.run_dir)} already finished at step {state['step']} (train.max_steps="
        f"{cfg.train.max_steps}, train.max_epochs={cfg.train.max_epochs}){shown}: nothing to do"
    )
    return line, value
