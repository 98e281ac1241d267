"""The check of a whole run config, before anything is built or created."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from glow_train.config import TrainConfig, check_train, typed, upgrade_keys
from glow_train.data import validate_dataset_config
from glow_train.errors import ConfigError, require_int
from glow_train.models import model_class

__all__ = ["check_config"]


def check_config(cfg: DictConfig | dict) -> DictConfig:
    """The run config typed by its schemas (top level and ``train.*``, the model's own,
    the dataset's) and range-checked; every problem is one ``ConfigError`` line.

    Idempotent, so the trainer can check what :func:`glow_train.training.train` checked.
    """
    cfg = typed(TrainConfig, upgrade_keys(cfg))
    options = OmegaConf.to_container(cfg.model, resolve=True)
    options.setdefault("name", "glow")  # configs of version-1 checkpoints name no model
    schema = model_class(options["name"]).schema
    with open_dict(cfg):
        cfg.model = typed(schema, options, "model")
        cfg.dataset = validate_dataset_config(cfg.dataset)
    for key, low in (("batch_size", 1), ("eval_batch_size", 1), ("num_workers", 0)):
        require_int(f"dataset.{key}", cfg.dataset.get(key), low)
    check_train(cfg)
    if cfg.train.memory_saving and float(cfg.model.get("dropout") or 0) > 0:
        raise ConfigError(
            "train.memory_saving recomputes each layer, which would draw other dropout "
            "masks; set model.dropout=0 with it"
        )
    return cfg
