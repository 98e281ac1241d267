"""The check of a whole run config, before anything is built or created."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf, open_dict

from glow_train.config import (
    OPTIMIZERS,
    PRECISIONS,
    TrainConfig,
    typed,
    upgrade_keys,
)
from glow_train.data import validate_dataset_config
from glow_train.data.checks import refuse_unused_dataset_options
from glow_train.errors import ConfigError, DataError, show
from glow_train.models import model_class
from glow_train.models.registry import refuse_unused_model_options
from glow_train.training.compiling import check_compile
from glow_train.training.signals import preempt_signal
from glow_train.training.sizing import AUTO_KEYS, auto_keys
from glow_train.validate import parse_duration, require_int

__all__ = ["check_config", "check_train", "fitted_batch_size", "refuse_unused_options"]


def check_config(cfg: DictConfig | dict) -> DictConfig:
    """The run config typed by its schemas (top level and `train.*`, the model's own,
    the dataset's) and range-checked; every problem is one `ConfigError` line.

    Idempotent, so the trainer can check what `glow_train.training.train` checked.
    """
    cfg = typed(TrainConfig, upgrade_keys(cfg))
    options = _model_options(cfg)
    schema = model_class(options["name"]).schema
    with open_dict(cfg):
        cfg.model = typed(schema, options, "model")
        cfg.dataset = validate_dataset_config(cfg.dataset)
    auto = set(auto_keys(cfg))  # resolved by the trainer from the training-split size
    for key in AUTO_KEYS:
        if key not in auto:
            _check_number(key, _value(cfg, key))
    for key, low in (("batch_size", 1), ("eval_batch_size", 1), ("num_workers", 0)):
        if f"dataset.{key}" not in auto and (key, cfg.dataset.get(key)) != ("num_workers", "auto"):
            require_int(f"dataset.{key}", cfg.dataset.get(key), low)
    check_train(cfg, auto)
    dropout = cfg.model.get("dropout")
    if cfg.train.memory_saving and (dropout == "auto" or float(dropout or 0) > 0):
        raise ConfigError(
            "train.memory_saving recomputes each layer, which would draw other dropout "
            "masks; set model.dropout=0 with it"
        )
    return cfg


def refuse_unused_options(cfg: DictConfig, typed_keys: Iterable[str]) -> None:
    """Refuse, in one line, the first `dataset.*` option of `typed_keys` (those the
    command line set) that the run's source does not read, then the first `model.*`
    one its model settings leave unused
    (`glow_train.data.checks.refuse_unused_dataset_options`,
    `glow_train.models.registry.refuse_unused_model_options`)."""
    typed_keys = list(typed_keys)
    refuse_unused_dataset_options(OmegaConf.to_container(cfg.dataset), typed_keys)
    refuse_unused_model_options(_model_options(cfg), typed_keys)


def _model_options(cfg: DictConfig) -> dict:
    """`cfg.model` as a plain dict, with its `name` (a version-1 checkpoint's config
    names no model: `glow`)."""
    options = OmegaConf.to_container(cfg.model, resolve=True)
    options.setdefault("name", "glow")
    return options


def _value(cfg: DictConfig, dotted: str):
    section, key = dotted.split(".")
    return cfg[section].get(key)


def _check_number(key: str, value) -> None:
    """A setting that could have been `auto` holds a number of its type (or null)."""
    if value is None:
        return
    kind = AUTO_KEYS[key]
    if kind is str:
        return  # a choice: checked by the model that takes it
    ok = isinstance(value, numbers.Integral if kind is int else numbers.Real)
    if isinstance(value, bool) or not ok:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{key} must be {what} or auto, got {value!r}")


def check_train(cfg: DictConfig, auto: set[str] = frozenset()) -> None:
    """Range checks of the top-level keys and `train.*` (types are the schema's);
    the settings in `auto` are still the word `auto` and are checked once resolved."""
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision={cfg.precision!r}; use {', '.join(PRECISIONS)}")
    t = cfg.train
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer={t.optimizer!r}; use {', '.join(OPTIMIZERS)}")
    if t.lr <= 0:
        raise ConfigError(f"train.lr must be positive, got {show(t.lr)}")
    if cfg.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {cfg.seed}")
    for key in ("max_steps", "max_epochs", "init_samples", "max_bad_steps", "log_every"):
        if f"train.{key}" not in auto and t[key] is not None and t[key] < 1:
            raise ConfigError(f"train.{key} must be at least 1 (or null), got {t[key]}")
    if t.early_stopping is not None and t.early_stopping < 1:
        raise ConfigError(
            f"train.early_stopping must be at least 1 evaluation (or null), got {t.early_stopping}"
        )
    for key in ("eval_every_steps", "eval_every_epochs", "sample_every", "ckpt_every"):
        if f"train.{key}" not in auto and t[key] is not None and t[key] < 1:
            raise ConfigError(f"train.{key} must be at least 1 (or null to turn it off)")
    if t.ema_decay is not None and not 0 < t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in (0, 1) or null, got {show(t.ema_decay)}")
    if t.grad_clip is not None and t.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip must be positive or null, got {show(t.grad_clip)}")
    preempt_signal(t.preempt_signal)
    check_compile(t.compile, t.compile_mode)
    if not (math.isfinite(t.class_loss_weight) and t.class_loss_weight >= 0):
        raise ConfigError(f"train.class_loss_weight must be >= 0, got {show(t.class_loss_weight)}")
    for key in ("warmup_steps", "weight_decay"):
        if f"train.{key}" not in auto and t[key] < 0:
            raise ConfigError(f"train.{key} must not be negative, got {show(t[key])}")
    if t.num_samples < 1:
        raise ConfigError(f"train.num_samples must be at least 1, got {t.num_samples}")
    temperatures = list(t.sample_temperatures)
    if not temperatures or not all(math.isfinite(x) and x >= 0 for x in temperatures):
        raise ConfigError(
            f"train.sample_temperatures must be one or more numbers >= 0, got {show(temperatures)}"
        )
    if t.eval_seed < 0:
        raise ConfigError(f"train.eval_seed must be >= 0, got {t.eval_seed}")
    parse_duration(t.time_limit)
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise ConfigError(f"train.betas must be two numbers in [0, 1), got {show(list(t.betas))}")
    if all(t[k] is None for k in ("max_steps", "max_epochs", "time_limit")):
        raise ConfigError(
            "no stopping rule: set train.max_steps, train.max_epochs or train.time_limit"
        )


#: the fewest training items per process a run trains on (or its `dataset.batch_size`, when
#: a smaller batch was asked for): fewer estimate no gradient worth the name, and the
#: standardisation and ActNorm statistics fewer still
MIN_TRAIN_ITEMS = 8


def fitted_batch_size(batch_size: int, per_rank: int, main: bool) -> int:
    """`dataset.batch_size`, or the training items per process when there are fewer
    (a small table trains with the defaults: one batch per epoch), said in one note.

    Raises:
        DataError: fewer training items per process than `MIN_TRAIN_ITEMS` or the
            batch size, whichever is smaller.
    """
    if per_rank < min(MIN_TRAIN_ITEMS, batch_size):
        raise DataError(
            f"{per_rank} training items per process, fewer than the {MIN_TRAIN_ITEMS} a run "
            f"needs (dataset.batch_size={batch_size} would be cut to {per_rank}); add data, "
            "or hold fewer items out for validation and test"
        )
    if 0 < per_rank < batch_size:
        if main:
            print(
                f"note: dataset.batch_size={batch_size} is larger than the {per_rank} training "
                f"items per process; using batches of {per_rank}"
            )
        return per_rank
    return batch_size
