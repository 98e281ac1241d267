"""The model registry: `model.name` -> a `FlowModel` class.

A checkpoint records the model's name beside its constructor arguments, so
`glow_train.likelihood.loading.load_model` rebuilds whatever model it holds and the
checkpoint module imports no model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from glow_train.data.spec import DataSpec
from glow_train.errors import ConfigError
from glow_train.models.base import FlowModel
from glow_train.models.glow import Glow
from glow_train.models.glow1d import Glow1D

__all__ = ["MODELS", "register_model", "model_class", "build_model", "refuse_unused_model_options"]

MODELS: dict[str, type[FlowModel]] = {}


def register_model(cls: type[FlowModel]) -> type[FlowModel]:
    """Add a model class under `cls.name` (usable as a decorator)."""
    if cls.name in MODELS:
        raise ValueError(f"model {cls.name!r} is already registered")
    MODELS[cls.name] = cls
    return cls


register_model(Glow)
register_model(Glow1D)


def model_class(name: Any) -> type[FlowModel]:
    """The registered model class called `name`.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def build_model(options: Mapping[str, Any], spec: DataSpec) -> FlowModel:
    """The model named by `options["name"]` (the `model.*` config) for `spec`'s data.

    `conditional: true` makes it class-conditional on `spec.num_classes` labels.

    Raises:
        ConfigError: an unknown name, or values the model refuses.
    """
    options = dict(options)
    cls = model_class(options.pop("name"))
    if options.pop("conditional", False):
        if spec.num_classes < 1:
            raise ConfigError(
                "model.conditional=true needs labelled data, and this dataset has no labels; "
                "use digits, mnist, cifar10 or dataset=folder dataset.classes=true"
            )
        options["num_classes"] = spec.num_classes
    try:
        return cls.for_data(spec, options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model: {err}") from err


def refuse_unused_model_options(options: Mapping[str, Any], typed: Iterable[str]) -> None:
    """Refuse, in one line, the first `model.<key>` of `typed` (the options a command
    line set) that the model's other `options` leave unused, e.g.
    `model.mixture_components=8` with `model.coupling=affine`.

    Raises:
        ConfigError: naming the option as typed, what would use it, and the fix.
    """
    options = dict(options)
    cls = MODELS.get(options.get("name"))
    if cls is None:  # an unknown name: refused with the list of names when it is built
        return
    for key in typed:
        if not key.startswith("model."):
            continue
        option = key.removeprefix("model.")
        why = cls.unused_option(options, option)
        if why is not None:
            raise ConfigError(f"{key}={options.get(option)} does nothing here: {why}")
