"""The dataset registry: `dataset.name` -> a `DataSource`.

Each source lives in a module of its own and exports `SOURCE`; a new kind of
data is one more module and one `register_dataset` call (plus its
`configs/dataset/<name>.yaml`), with no table elsewhere to keep in step.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from glow_train.config import SPLITS, typed
from glow_train.data import celeba, cifar10, digits, folder, mnist, table
from glow_train.data.checks import as_dict, check_image_keys, fraction_or_count, int_key
from glow_train.data.spec import DataSource, DataSpec
from glow_train.errors import ConfigError, show

__all__ = [
    "DATASETS",
    "SPLITS",
    "register_dataset",
    "source",
    "build_dataset",
    "describe_dataset",
    "dataset_names",
    "dataset_config",
    "validate_dataset_config",
    "train_and_validation",
    "validation_size",
]


VAL_DRAWS = (None, "random", "last")  # dataset.val_draw (None: random)
DATASETS: dict[str, DataSource] = {}


def register_dataset(entry: DataSource) -> DataSource:
    """Add a source under `entry.name` (a name may be registered once)."""
    if entry.name in DATASETS:
        raise ValueError(f"dataset {entry.name!r} is already registered")
    DATASETS[entry.name] = entry
    return entry


for _module in (digits, mnist, cifar10, celeba, folder, table):
    register_dataset(_module.SOURCE)


def dataset_names() -> tuple[str, ...]:
    """The names `dataset=` accepts, in registration order."""
    return tuple(DATASETS)


def source(name: Any) -> DataSource:
    """The registry entry of `name`, or one error listing the known names."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def dataset_config(name: str, /, **overrides: Any) -> dict[str, Any]:
    """Load the packaged config-group entry `configs/dataset/<name>.yaml` as a plain dict.

    For library use and tests without Hydra; interpolations (the default `root`) are
    resolved and the entry's schema reference (its defaults list) is dropped.
    `overrides` replace top-level keys.
    """
    source(name)  # an unknown name: one error listing the known ones
    text = resources.files("glow_train.configs").joinpath("dataset", f"{name}.yaml").read_text()
    cfg = OmegaConf.to_container(OmegaConf.create(text), resolve=True)
    cfg.pop("defaults", None)
    cfg.update(overrides)
    return cfg


def validate_dataset_config(cfg: Any, shape_only: bool = False) -> dict[str, Any]:
    """Check a dataset config and return it as a plain dict.

    Types and unknown keys are the source's schema's; then the name (a registered
    source), for images `image_size` (positive) and `channels` (1 or 3), and unless
    `shape_only`, `n_bits` (1..8), the loader sizes when present and the source's
    own keys.
    Whether `image_size` suits the model (divisible by `2^L`) is the model's check.

    Raises:
        ConfigError: naming the offending key and value.
    """
    given = as_dict(cfg)
    entry = source(given.get("name"))
    checked = as_dict(typed(entry.schema, given, "dataset"))
    cfg = {key: checked[key] for key in given}  # converted, without the keys not given
    if entry.kind == "image":
        check_image_keys(cfg)
    if shape_only:
        return cfg
    if entry.kind == "image":
        int_key(cfg, "n_bits", 1, 8)
    for key in ("batch_size", "eval_batch_size"):
        # batch_size may be auto: the trainer resolves it (glow_train.training.sizing)
        if cfg.get(key) is not None and cfg.get(key) != "auto":
            int_key(cfg, key, 1)
    if cfg.get("num_workers") not in (None, "auto"):  # auto: glow_train.data.loader
        int_key(cfg, "num_workers", 0)
    if entry.kind == "image" and cfg.get("val_size") is not None:
        fraction_or_count(cfg, "val_size")
        if cfg.get("split_seed") is not None:
            int_key(cfg, "split_seed", 0)
        if cfg.get("val_draw") not in VAL_DRAWS:
            raise ConfigError(
                f"dataset.val_draw must be random or last, got {cfg.get('val_draw')!r}"
            )
    entry.validate(cfg)
    return cfg


def describe_dataset(cfg: Any) -> DataSpec:
    """The `DataSpec` of a dataset config, without loading any data.

    Only the keys that fix the shape are required, so a config whose `root` is
    unset (e.g. for sampling) still works; `n_bits` is `None` when not given.
    """
    cfg = validate_dataset_config(cfg, shape_only=True)
    return source(cfg["name"]).spec(cfg)


def build_dataset(cfg: Any, split: str) -> Dataset:
    """Build the configured dataset's `split`.

    Args:
        cfg: the dataset config (`cfg.dataset` of the run: a Mapping or DictConfig).
        split: `"train"`, `"val"` or `"test"`. An image source's validation
            images are `dataset.val_size` of its training images, drawn with
            `dataset.split_seed`, and `"train"` is the rest (CelebA's own
            `valid` partition is not used); the table source cuts its own.

    Returns:
        A map-style dataset of `(item, int label)` with a `num_classes` attribute
        (0 when there are no labels; labels are then -1). Image items are uint8
        `(C, H, W)` tensors.

    Raises:
        ConfigError: an invalid config value or split.
        DataError: missing, incomplete or unreadable files.
    """
    cfg = validate_dataset_config(cfg)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    entry = source(cfg["name"])
    if entry.kind != "image" or split == "test":
        return entry.build(cfg, split)
    train, val = _held_out(entry, cfg)
    if split == "train":
        return train
    if val is None:
        raise ConfigError(
            f"dataset={entry.name} has no validation split (dataset.val_size=0); set "
            "dataset.val_size or use split=test"
        )
    return val


def train_and_validation(cfg: Any) -> tuple[Dataset, Dataset | None]:
    """The configured dataset's training split and its validation split (`None`
    when it has none), reading an image source's training data once for both."""
    cfg = validate_dataset_config(cfg)
    entry = source(cfg["name"])
    if entry.kind == "image":
        return _held_out(entry, cfg)
    val = entry.build(cfg, "val")
    return entry.build(cfg, "train"), (val if len(val) > 0 else None)


def _held_out(entry: DataSource, cfg: dict[str, Any]) -> tuple[Dataset, Dataset | None]:
    """An image source's `(train, val)`: `dataset.val_size` of its training images
    are validation (`None` when there are none): drawn with `dataset.split_seed`
    (`val_draw: random`, the default), or the last ones in the source's order
    (`val_draw: last`: on digits they predict the test figure, the images after them,
    far better than a random draw; see docs/guide/datasets.md)."""
    full = entry.build(cfg, "train")
    n_val = validation_size(cfg, len(full))
    if n_val == 0:
        return full, None
    if n_val >= len(full):
        raise ConfigError(
            f"dataset.val_size={show(cfg['val_size'])} leaves no training images of "
            f"{len(full)}; lower it"
        )
    if cfg.get("val_draw") == "last":
        order = torch.arange(len(full)).roll(n_val)  # the last n_val first
    else:
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(_seed(cfg)))
    return (
        HeldOut(full, order[n_val:].sort().values.tolist()),
        HeldOut(full, order[:n_val].sort().values.tolist()),
    )


def _seed(cfg: dict[str, Any]) -> int:
    return int(cfg.get("split_seed") or 0)


def validation_size(cfg: dict[str, Any], num_train: int) -> int:
    """`dataset.val_size` of an image source as a count of its `num_train` training
    images (`None` or 0: no validation split)."""
    value = float(cfg.get("val_size") or 0)
    return int(value) if value >= 1 else int(round(value * num_train))


class HeldOut(Dataset):
    """The items `indices` of `dataset` (validation images, or the training images
    left after them), with its `num_classes`."""

    def __init__(self, dataset: Dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices
        self.num_classes = getattr(dataset, "num_classes", 0)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]
