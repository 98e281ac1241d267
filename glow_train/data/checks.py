"""Helpers for the range checks of `dataset.*` that the sources share.

Types and known keys come from the schema (`glow_train.config.ImageDatasetConfig`);
`glow_train.data.registry.validate_dataset_config` applies it, then the common
image checks here, then the source's own check from its registry entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from glow_train.config import packaged_defaults
from glow_train.errors import ConfigError, show
from glow_train.validate import require_int

__all__ = [
    "as_dict",
    "require_key",
    "require_root",
    "int_key",
    "check_image_keys",
    "fraction_or_count",
    "split_count",
    "source_keys",
    "refuse_unused_dataset_options",
]


def as_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict of a dataset config (a Mapping or an OmegaConf DictConfig)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"dataset config must be a mapping, got {type(cfg).__name__}")
    return dict(cfg)


def require_key(cfg: Mapping[str, Any], key: str) -> Any:
    """`cfg[key]`, or a `ConfigError` saying it must be set."""
    if cfg.get(key) is None:
        raise ConfigError(f"dataset.{key} is missing for dataset={cfg.get('name')}; set it")
    return cfg[key]


def int_key(cfg: Mapping[str, Any], key: str, low: int, high: int | None = None) -> int:
    """`cfg[key]` as an int in `low..high` (it must be set)."""
    return require_int(f"dataset.{key}", require_key(cfg, key), low, high)


def check_image_keys(cfg: Mapping[str, Any]) -> None:
    """`image_size` (positive) and `channels` (1 or 3) are set and valid."""
    int_key(cfg, "image_size", 1)
    if require_key(cfg, "channels") not in (1, 3):
        raise ConfigError(f"dataset.channels must be 1 or 3, got {cfg['channels']!r}")


def require_root(cfg: Mapping[str, Any]) -> None:
    """The check of the sources that read files from `dataset.root`."""
    if cfg.get("root") is None:
        raise ConfigError(
            f"dataset.root is missing for dataset={cfg['name']}; set dataset.root=/path"
        )


def fraction_or_count(cfg: Mapping[str, Any], key: str) -> float:
    """`dataset.<key>` checked to be a fraction in [0, 1) or a whole count."""
    value = float(require_key(cfg, key))
    if value < 0 or (value >= 1 and not value.is_integer()):
        raise ConfigError(
            f"dataset.{key} must be a fraction in [0, 1) or a count, got {show(value)}"
        )
    return value


def split_count(cfg: dict[str, Any], key: str, total: int) -> int:
    """`dataset.<key>` (a fraction in [0, 1) or a whole count) as a count of `total`."""
    value = fraction_or_count(cfg, key)
    return int(value) if value >= 1 else int(round(value * total))


def source_keys(name: str) -> set[str] | None:
    """The keys the packaged `configs/dataset/<name>.yaml` sets: the options its source
    reads. `None` for a source without one (registered from Python)."""
    try:
        return set(packaged_defaults(f"dataset/{name}").keys())
    except FileNotFoundError:
        return None


def refuse_unused_dataset_options(cfg: Mapping[str, Any], typed: Iterable[str]) -> None:
    """Refuse, in one line, the first `dataset.<key>` of `typed` (the options a command
    line set) that the source `cfg["name"]` does not read, e.g. `dataset.prepared=auto`
    with `dataset=mnist`: the shared schema accepts every source's keys.

    Raises:
        ConfigError: naming the option as typed, the source and its options.
    """
    name = str(cfg.get("name"))
    keys = source_keys(name)
    if keys is None:
        return
    for key in typed:
        if not key.startswith("dataset."):
            continue
        option = key.removeprefix("dataset.").split(".", 1)[0]
        if option not in keys:
            value = cfg.get(option)
            raise ConfigError(
                f"{key}={value if isinstance(value, str) else show(value)} does nothing for "
                f"dataset={name}: its options "
                f"are {', '.join(sorted(keys - {'name'}))}; leave {key}= out"
            )
