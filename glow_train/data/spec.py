"""What a dataset yields, described without loading it.

Every registered data source returns a `DataSpec` from its configuration
alone. The model registry builds a model for it, the objective picks the
dequantiser and the reported unit from it, and the sampler turns model output
back into data with it, so none of them needs to know which dataset it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from glow_train.config import ImageDatasetConfig

__all__ = ["DataSpec", "DataSource", "KINDS", "image_spec"]

#: `image`: `(C, H, W)` uint8 pixels; `vector`: `(D,)` real numbers.
KINDS = ("image", "vector")


@dataclass(frozen=True)
class DataSpec:
    """The shape and nature of one data item.

    Attributes:
        kind: one of `KINDS`.
        shape: the shape of one item, `(C, H, W)` for images, `(D,)` for vectors.
        n_bits: bit depth of quantised data (images: 1..8), `None` for continuous data.
        num_classes: number of label values, 0 when the data has no labels.
        columns: vectors: the name of each of the `D` dimensions (for windows
            `<column>[t]`, `t` in `0..W-1`, time-major).
        loc: vectors: the per-dimension mean of the training split.
        scale: vectors: the per-dimension standard deviation of the training split;
            the objective standardises with `loc` and `scale` and adds the
            log-determinant, so likelihoods stay in the data's own units.
        transform: vectors: `"log_return"` when the items are log-returns of the
            columns, else `None`.
        window: time series: the window length `W` (`None` for rows of a table).
        series: time series: the columns the windows were cut from.
        context: time series with `dataset.context=C`: each item is the `C` steps
            before its window, then the window (`(C + W)·c` values, time-major), and
            a model of it is the density of the window given those `C` steps.
        memory: time series with a context and `dataset.memory=M`: the `M` steps
            before the context also lead each item (`NaN` before the series' start),
            the long past a model's recursions read (`glow_train.flows.recursion`).
    """

    kind: str
    shape: tuple[int, ...]
    n_bits: int | None
    num_classes: int = 0
    columns: tuple[str, ...] = ()
    loc: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    transform: str | None = None
    window: int | None = None
    series: tuple[str, ...] = ()
    context: int | None = None
    memory: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown data kind {self.kind!r}; one of {', '.join(KINDS)}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        for key in ("columns", "series"):
            object.__setattr__(self, key, tuple(str(c) for c in getattr(self, key)))
        for key in ("loc", "scale"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, tuple(float(v) for v in value))

    @property
    def num_dims(self) -> int:
        """`D`, the number of dimensions of one item (`C·H·W` for images)."""
        return math.prod(self.shape)

    @property
    def context_dims(self) -> int:
        """The leading values of an item that are given: `(M + C)·c` (0 without a
        context)."""
        return self.past * max(len(self.series), 1)

    @property
    def past(self) -> int:
        """The steps of the past an item holds: `M + C` (0 without a context)."""
        return int(self.context or 0) + (int(self.memory or 0) if self.context else 0)

    @property
    def quantized(self) -> bool:
        """Whether the data lies on a grid of `n_bits` (images), not continuous."""
        return self.n_bits is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain containers, for checkpoints and `eval.json`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSpec:
        """The inverse of `to_dict` (a checkpoint's `data`); unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def mismatch_message(self, data_cfg: dict[str, Any], model: dict[str, Any], ckpt: Any) -> str:
        """Why data of this spec does not fit the model stored in `ckpt` (its `data`
        dict), and what to set: image keys for an image model, the columns (or the
        window) for a vector model."""
        given = "x".join(map(str, self.shape))
        wanted = "x".join(map(str, model["shape"]))
        what = (
            f"dataset {data_cfg['name']} yields {given} {self.kind}s but the model of {ckpt} takes"
        )
        if model["kind"] != "vector":
            return f"{what} {wanted} images; set dataset.image_size= and dataset.channels= to match"
        columns = model.get("columns") or []
        if model.get("window"):
            series = ", ".join(model.get("series") or [])
            return (
                f"{what} windows of {model['window']} steps of {series} "
                f"({wanted} values); set dataset.columns= and dataset.window= to match"
            )
        named = f" ({', '.join(columns)})" if columns else ""
        return f"{what} {wanted} columns{named}; set dataset.columns= to those columns"


def _no_check(cfg: dict[str, Any]) -> None:
    return None


def image_spec(cfg: dict[str, Any], num_classes: int) -> DataSpec:
    """The spec of an image source from its (checked) config: `(channels, size, size)`."""
    size = int(cfg["image_size"])
    n_bits = cfg.get("n_bits")
    return DataSpec(
        "image",
        (int(cfg["channels"]), size, size),
        None if n_bits is None else int(n_bits),
        num_classes,
    )


@dataclass(frozen=True)
class DataSource:
    """A registry entry (`glow_train.data.registry`): how to build and describe
    one kind of dataset from its `dataset.*` config.

    Attributes:
        name: the `dataset.name` (and the `configs/dataset/<name>.yaml` entry).
        build: `(checked config, split) -> Dataset` of `(item, int label)`.
        num_classes: number of label values, 0 when the source has no labels.
        validate: the source's own checks of its config (after the common ones).
        describe: `(checked config, num_classes) -> DataSpec`; image sources need no
            data for it, the table source reads its file (the statistics).
        kind: the `KINDS` entry of what it yields.
        schema: the dataclass that types its `dataset.*` keys.
    """

    name: str
    build: Callable[[dict[str, Any], str], Any]
    num_classes: int = 0
    validate: Callable[[dict[str, Any]], None] = _no_check
    describe: Callable[[dict[str, Any], int], DataSpec] = image_spec
    kind: str = "image"
    schema: type = ImageDatasetConfig

    def spec(self, cfg: dict[str, Any]) -> DataSpec:
        """The `DataSpec` of the data `cfg` describes."""
        return self.describe(cfg, self.num_classes)
