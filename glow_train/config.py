"""Typed configuration: the dataclass schemas behind the YAML under `configs/`.

The defaults live in the YAML; these schemas only say which keys exist, what type
each holds and, for the options of `glow-sample` and `glow-eval`, which values are
valid (`checked`). They are registered in Hydra's ConfigStore (`register_configs`,
run when the `glow_train.configs` package is imported, which Hydra does before
composing), and the YAML files name them in their defaults lists, so OmegaConf
itself rejects `train.lr=abc`, `model.K=2.5` or a misspelt key while the command
line is read.

Each command's options are declared here once: `TrainConfig`, `SampleConfig` and
`EvalConfig` (a field and its value in the YAML). The command passes its composed
config as one object to the function behind it; the Python API builds the same
object from the YAML and keyword overrides (`glow_train.modes.command_options`).

Plain dicts get the same checks through `typed`. Range checks stay with the code
that owns each group (`glow_train.training.checks.check_train`, the data's
`validate_dataset_config`, the model classes, `glow_train.validate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from glow_train.errors import ConfigError

__all__ = [
    "TrainLoopConfig",
    "TrainConfig",
    "GlowConfig",
    "Glow1DConfig",
    "ImageDatasetConfig",
    "TableDatasetConfig",
    "SampleConfig",
    "EvalConfig",
    "register_configs",
    "packaged_defaults",
    "typed",
    "upgrade_keys",
    "checked",
    "PRECISIONS",
    "OPTIMIZERS",
    "SPLITS",
    "LAYOUTS",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw", "adamax")
SPLITS = ("train", "val", "test")  # glow-eval split= and every dataset's splits
LAYOUTS = ("grids", "rows")  # glow-sample layout=


def checked(default: Any = MISSING, **rule: Any) -> Any:
    """A schema field whose value `glow_train.modes.command_options` checks by `rule`.

    `low` (and `high`): an integer in that range (`None` passes when the default is
    `None`); `choices`: one of those values; `example`: a number or a list of numbers
    (each `>= low` when given), turned into a list of floats, `example` showing a valid
    value in the message; `why`: the reason for the range, added to the message. Nothing
    else about the field changes: OmegaConf reads its type and default as usual.
    """
    return field(default=default, metadata={"check": rule})


# --------------------------------------------------------------------------- schemas


@dataclass
class ImageDatasetConfig:
    """`dataset.*` of the image sources (`configs/dataset/*.yaml`)."""

    name: str | None = None  # required by every config that names a dataset
    root: str | None = None
    download: bool | None = None
    crop: int | None = None
    image_size: int | None = None
    channels: int | None = None
    n_bits: int | None = None
    test_fraction: float | None = None
    classes: bool | None = None
    val_size: float | None = None
    val_draw: str | None = None
    split_seed: int | None = None
    hflip: bool | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = None
    num_workers: Any = None  # an int, or auto (glow_train.data.loader.resolve_workers)
    prepared: Any = None  # auto, off (YAML's bare off: false) or a folder (data.prepared)


@dataclass
class TableDatasetConfig:
    """`dataset.*` of the table source (`configs/dataset/csv.yaml`)."""

    name: str | None = None
    path: str | None = None
    columns: list[str] | None = None
    header: Any = None  # auto|true|false; true/false arrive as booleans (checked by the source)
    delimiter: str | None = None
    dropna: bool | None = None
    window: int | None = None
    context: int | None = None
    memory: int | None = None
    stride: int | None = None
    transform: str | None = None
    val_size: float | None = None
    test_size: float | None = None
    split_seed: int | None = None
    batch_size: Any = None  # an int, or auto (glow_train.training.sizing)
    eval_batch_size: int | None = None
    num_workers: int | None = None


@dataclass
class GlowConfig:
    """`model.*` of `glow_train.Glow` (`configs/model/glow.yaml`)."""

    name: str = "glow"
    K: int = MISSING
    L: int = MISSING
    hidden_channels: int = MISSING
    coupling: str = MISSING  # a name, or auto (glow_train.training.sizing)
    lu: bool = MISSING
    dropout: float = 0.0  # absent from older checkpoints' configs: none
    conditional: bool = False  # likewise; True: num_classes from the dataset's labels
    conditioner: str = "conv"  # likewise: the Glow paper's three-layer conditioner
    conditioner_blocks: int = 2  # likewise (resnet|attention only)
    attention_heads: int = 4  # likewise (attention only)
    mixture_components: int = 32  # likewise (coupling=logistic_mixture only)


@dataclass
class Glow1DConfig:
    """`model.*` of `glow_train.Glow1D` (`dim` comes from the data)."""

    name: str = "glow1d"
    K: Any = MISSING  # an int, or auto (glow_train.training.sizing)
    hidden_features: Any = MISSING  # likewise
    hidden_layers: int = MISSING
    activation: str = MISSING
    dropout: Any = MISSING  # a float, or auto
    coupling: str = MISSING  # a name, or auto (glow_train.training.sizing)
    lu: bool = MISSING
    spline_bins: int = 8  # absent from older checkpoints' configs: the model's own default
    spline_bound: float = 4.0  # likewise
    prior: str = "gaussian"  # likewise
    prior_components: int = 8  # likewise
    context_magnitudes: bool = False  # likewise
    recursions: int = 1  # likewise


@dataclass
class TrainLoopConfig:
    """`train.*` (`configs/train.yaml`)."""

    max_steps: Any = MISSING  # an int, null or auto (glow_train.training.sizing)
    max_epochs: int | None = MISSING
    time_limit: str | None = MISSING
    optimizer: str = MISSING
    lr: float = MISSING
    betas: list[float] = MISSING
    weight_decay: Any = MISSING  # a number >= 0 or auto
    warmup_steps: Any = MISSING  # an int or auto
    cosine_decay: bool = MISSING
    grad_clip: float | None = MISSING
    ema_decay: float | None = MISSING
    init_samples: int = MISSING
    max_bad_steps: int = MISSING
    early_stopping: int | None = MISSING
    log_every: int = MISSING
    eval_every_steps: Any = MISSING  # an int, null or auto
    eval_every_epochs: int | None = MISSING
    eval_seed: int = MISSING
    ckpt_every: int | None = MISSING
    sample_every: int | None = MISSING
    sample_temperatures: list[float] = MISSING
    num_samples: int = MISSING
    compile: Any = MISSING  # true, false or auto
    compile_mode: str = "default"  # absent from older checkpoints' configs: torch's default
    memory_saving: bool = MISSING
    dequantization: str = MISSING
    class_loss_weight: float = MISSING
    preempt_signal: str | None = MISSING
    cudnn_benchmark: bool = MISSING
    tf32: bool = True  # absent from older checkpoints' configs: on, as configs/train.yaml
    progress: bool = MISSING


@dataclass
class TrainConfig:
    """The whole `glow-train` config; `dataset` and `model` are typed by their
    group's own schema (each group entry names it in its defaults list)."""

    preset: str | None = None  # the preset file the dataset chose (configs/preset/)
    seed: int = MISSING
    device: str = MISSING
    precision: str = MISSING
    run_dir: str | None = None
    ckpt: str | None = None
    dataset: Any = MISSING
    model: Any = MISSING
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    # rules for settings given as auto (glow_train.training.sizing); null: none
    sizing: Any = None


@dataclass
class SampleConfig:
    """The options of `glow-sample`, each mode's included (`configs/sample.yaml`)."""

    ckpt: str | None = None
    temperature: Any = checked(example="0.7", low=0)  # a number or a list of numbers
    n: int = checked(low=1)
    nrow: int | None = checked(None, low=1)
    padding: int = checked(low=0)
    layout: str = checked(choices=LAYOUTS)
    seed: int = checked(low=0)
    batch_size: int | None = checked(None, low=1)
    out: str | None = None
    overwrite: bool = MISSING
    device: str = MISSING
    ema: bool = MISSING
    precision: str = MISSING
    start_price: float | None = None
    y: Any = None  # a class, "all" or null; checked by glow_train.sampling.class_choice
    mode: str = MISSING  # sample|interpolate|direction|manipulate|forecast (sampling.MODES)
    a: Any = None  # interpolate: test-set indices or image files
    b: Any = None
    steps: int = checked(low=2)
    interp: str = MISSING
    attribute: Any = None  # direction / manipulate
    image: Any = None
    alpha: Any = checked(example="[-1,0,1]")
    max_images: int = checked(low=2)
    horizon: int = MISSING  # forecast: steps per path
    context_end: int | None = None  # forecast: values of the series before the first step


@dataclass
class EvalConfig:
    """The options of `glow-eval`: its figures, `ood=` and `backtest=` (`configs/eval.yaml`)."""

    ckpt: str | None = None
    split: str = checked(choices=SPLITS)
    draws: int = checked(low=1)
    seed: int | None = checked(None, low=0)
    batch_size: int | None = checked(None, low=1)
    n_bits: int | None = checked(None, low=1, high=8)
    per_image: bool = MISSING
    out: str | None = None
    overwrite: bool = MISSING
    device: str = MISSING
    ema: bool = MISSING
    progress: bool = MISSING
    ood: str | None = None  # a dataset name or a folder of images (glow_train.evaluation.ood)
    ood_train_images: int = checked(low=1)
    class_prior: str = MISSING  # p(y) of a class-conditional model's p(x): uniform|train
    precision: str = MISSING  # fp32|bf16|auto (glow_train.runtime.precision)
    backtest: str | None = None  # var: the risk backtest of a series model (series.BACKTESTS)
    backtest_samples: int = checked(
        low=100, why="the model's draws per step; the 1 % VaR is their 1st percentile"
    )
    # keys of the checkpoint's dataset config to replace, or a whole dataset=<name>
    # entry (typed by its own schema); checked by glow_train.data.validate_dataset_config
    dataset: Any = None
    # the model group dataset=csv selects for training; unused (the checkpoint's model)
    model: Any = None


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore under the names the YAML refers to."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="sample_schema", node=SampleConfig)
    store.store(name="eval_schema", node=EvalConfig)
    # group entries name these in their defaults list as /<name>@_here_; outside any
    # group, so `--help` does not offer them as choices
    store.store(name="glow_model_schema", node=GlowConfig)
    store.store(name="glow1d_model_schema", node=Glow1DConfig)
    store.store(name="image_dataset_schema", node=ImageDatasetConfig)
    store.store(name="table_dataset_schema", node=TableDatasetConfig)


def packaged_defaults(name: str, schema: type | None = None) -> DictConfig:
    """The top-level values of the packaged `configs/<name>.yaml` (its defaults list and
    `hydra:` left out), typed by `schema` if given: what a library call's `None` stands for."""
    from importlib import resources

    text = resources.files("glow_train.configs").joinpath(f"{name}.yaml").read_text()
    values = OmegaConf.create(text)
    for key in ("defaults", "hydra"):
        values.pop(key, None)
    return values if schema is None else typed(schema, values)


# --------------------------------------------------------------------- checking


#: keys older configs (inside older checkpoints) may hold that no longer exist:
#: dropped when such a config is read, so those runs still resume
RETIRED_KEYS = {"train": ("channels_last",)}  # the model always runs channels_last now


#: keys added after runs were saved without them, with the value those runs used
ADDED_KEYS = {
    "train": {
        "dequantization": "uniform",
        "class_loss_weight": 0.0,
        "preempt_signal": "SIGUSR2",
        "early_stopping": None,
    }
}


def upgrade_keys(values: Any) -> Any:
    """`values` (a run config, e.g. an older checkpoint's) without the
    `RETIRED_KEYS` and with every missing `ADDED_KEYS` entry."""
    values = OmegaConf.to_container(values) if OmegaConf.is_config(values) else dict(values)
    for section in set(RETIRED_KEYS) | set(ADDED_KEYS):
        if isinstance(values.get(section), Mapping):
            kept = {
                k: v for k, v in values[section].items() if k not in RETIRED_KEYS.get(section, ())
            }
            values[section] = {**ADDED_KEYS.get(section, {}), **kept}
    return values


def typed(schema: type, values: Any, where: str = "") -> DictConfig:
    """`values` (a Mapping or DictConfig) merged into `schema`: types converted and
    checked, unknown keys refused, each failure one `ConfigError` line."""
    if not isinstance(values, Mapping | DictConfig):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(values).__name__}")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), values)
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        prefix = f"{where}." if where else ""
        key = getattr(err, "full_key", None)
        message = str(err).splitlines()[0]
        if key:
            raise ConfigError(f"{prefix}{key}: {message}") from err
        raise ConfigError(f"{where or 'config'}: {message}") from err
    return cfg
