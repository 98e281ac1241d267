"""What the three commands share: the command line, checked before Hydra runs an app
(one line and exit status 2 for a value of the wrong type, an unknown key or an option
another command takes), one-line errors, and the checkpoint that `ckpt=` names.

Each command is one module of this package (`glow_train.cli.train`,
`glow_train.cli.sample`, `glow_train.cli.eval`): a Hydra app that turns
the composed config into plain arguments, calls one library function and prints
what it returns. Errors the user can fix (`glow_train.errors.GlowError`, and a
command line the typed configs refuse) print one line and exit with status 2. This
module imports only Hydra and OmegaConf (no PyTorch), so these answers come at once.
It also lets Hydra find this project's sweeper (`hydra_plugins.glow_train_sweeper`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from glow_train.config import EvalConfig, SampleConfig
from glow_train.errors import CheckpointError, GlowError, show

__all__ = [
    "check_command_line",
    "make_sweeper_visible",
    "CONFIG_MODULE",
    "CONFIG_PATH",
    "GROUPS",
    "OPTIONS",
    "report",
    "require_ckpt",
    "say_precision",
    "say_which",
    "typed_options",
    "whole_numbers_in_yaml",
]


def make_sweeper_visible() -> None:
    """Make `hydra/sweeper=glow` (`hydra_plugins.glow_train_sweeper`, the default
    of `glow-train -m`) composable and instantiable.

    Importing the plugin stores its config node. A regular install puts the plugin into
    site-packages' `hydra_plugins`, where Hydra's plugin scan finds the class; an
    editable install maps it through an import hook the scan (`pkgutil` over
    `hydra_plugins.__path__`) cannot list, so the source folder is added to that path,
    and the class is registered directly if Hydra scanned before this ran.
    """
    from pathlib import Path

    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton

    import hydra_plugins
    from hydra_plugins.glow_train_sweeper import glow_sweeper, optuna_sweeper

    own = Path(__file__).resolve().parents[2] / "hydra_plugins"  # beside glow_train/
    if (own / "glow_train_sweeper").is_dir() and str(own) not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(str(own))
    if Plugins in Singleton._instances:  # scanned already, perhaps without the sweepers
        plugins = Plugins.instance()
        for cls in (glow_sweeper.GlowSweeper, getattr(optuna_sweeper, "GlowOptunaSweeper", None)):
            if cls is not None and f"{cls.__module__}.{cls.__name__}" not in (
                plugins.class_name_to_class
            ):
                plugins._register(cls)


make_sweeper_visible()

CONFIG_MODULE = "glow_train.configs"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
GROUPS = ("dataset", "model", "preset", "experiment")


def _one_line(err: BaseException) -> str:
    """A Hydra composition error (several lines, a cause) as one line."""
    text = str(err).split("\nConfig search path")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0].rstrip(".") if lines else type(err).__name__
    first = first.removeprefix("Error merging override ")
    options = [line for line in text.splitlines()[1:] if line.startswith("\t")]
    if options:  # an unknown group entry: Hydra lists the available ones
        return f"{first}; choose one of {', '.join(o.strip() for o in options)}"
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        return f"{first}: {str(cause).splitlines()[0]}"
    return "; ".join(lines) if lines else first


#: the top-level keys glow-sample and glow-eval take (glow-train takes its groups too)
OPTIONS = {
    "sample": [f.name for f in fields(SampleConfig)],
    # (eval's model entry only absorbs dataset=csv's choice of model: not an option)
    "eval": [f.name for f in fields(EvalConfig) if f.name != "model"],
}


def check_command_line(config_name: str, prog: str) -> None:
    """Compose the config once before Hydra runs the app, so a value of the wrong type
    or an unknown key is one line and exit status 2 rather than Hydra's report; for
    glow-sample and glow-eval, a key they do not take is named with the ones they do.

    Under `-m` the overrides every job shares are checked the same way (each job's
    swept values are composed by the sweeper, `hydra_plugins.glow_train_sweeper`).
    Other command lines with Hydra's own flags (`--help`, `--cfg`) are left to Hydra.
    """
    sys.argv[1:] = [_quoted_delimiter(arg) for arg in sys.argv[1:]]
    overrides = sys.argv[1:]
    flags = {arg for arg in overrides if arg.startswith("-")}
    if flags - {"-m", "--multirun"}:
        return
    if flags:
        try:
            overrides = _shared_overrides([arg for arg in overrides if arg not in flags])
        except HydraException as err:
            print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
            sys.exit(2)
    if config_name in OPTIONS:
        for arg in overrides:
            key = override_key(arg).split(".", 1)[0]
            if key not in OPTIONS[config_name] and key != "hydra":
                print(
                    f"{prog}: error: {key} is not an option of {prog}; it takes "
                    f"{', '.join(OPTIONS[config_name])} (see {prog} --help)",
                    file=sys.stderr,
                )
                sys.exit(2)
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        message = _one_line(err)
        hint = _resume_hint(overrides, message, config_name)
        print(f"{prog}: error: {message}{hint}", file=sys.stderr)
        sys.exit(2)


def _quoted_delimiter(arg: str) -> str:
    """`dataset.delimiter=;` (or `|`, `:`, a tab, ...) as Hydra needs it quoted:
    `dataset.delimiter=';'`. Hydra's grammar reads such a character as syntax and stops
    with a lexer error; one character after this key can only mean itself."""
    key, sep, value = arg.partition("=")
    if key.lstrip("+") != "dataset.delimiter" or not sep or len(value) != 1:
        return arg
    if value.isalnum():
        return arg
    quote = '"' if value == "'" else "'"
    return f"{key}={quote}{value}{quote}"


def _resume_hint(overrides: list[str], message: str, config_name: str = "train") -> str:
    """For a key unknown to the default groups' schema on a `ckpt=` command line: how
    to name the run's own dataset, whose schema has it (a 1-D Glow's model keys); for
    `glow-eval`, which replaces only a few single keys of the checkpoint's dataset, how
    to name another dataset instead."""
    resuming = any(arg.startswith("ckpt=") for arg in overrides)
    named = any(arg.split("=", 1)[0] in ("dataset", "model") for arg in overrides)
    if not resuming or named or "not in" not in message:
        return ""
    if config_name != "train":
        return (
            "; a checkpoint's dataset takes only the single keys its --help lists "
            "(dataset.root, dataset.path, ...): name another dataset with dataset=<name> "
            "(e.g. dataset=csv) to set the others"
        )
    return (
        "; when resuming a run of another dataset, name it as well (e.g. dataset=csv "
        "for a 1-D Glow run) so that its keys are known"
    )


def _shared_overrides(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's command line that are not swept (nor Hydra's own)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [
        o.input_line
        for o in parsed
        if not o.is_sweep_override() and not o.is_hydra_override() and o.input_line
    ]


@contextmanager
def whole_numbers_in_yaml() -> Iterator[None]:
    """While open, the YAML that OmegaConf writes (Hydra's `--help` and `--cfg`) shows
    a whole float as a whole number (`val_size: 200`, not `200.0`), as
    `glow_train.errors.show` does in messages; reading it back gives the same value,
    since the schema types the field. Nothing else OmegaConf writes (a run folder's
    `.hydra/config.yaml`) is changed: the representer is restored on exit."""
    from omegaconf._utils import get_omega_conf_dumper

    dumper = get_omega_conf_dumper()
    own = "yaml_representers" in dumper.__dict__  # add_representer copies on first use
    previous = dumper.yaml_representers.get(float)

    def represent(representer: Any, value: float) -> Any:
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            text = show(value)  # 200, or 2e11 as configs/ write it
            # PyYAML's resolver reads 2e11 as a string, so the str tag writes it plain
            # (a float tag would add `!!float`); OmegaConf reads it back as the float
            tag = "str" if "e" in text else "int"
            return representer.represent_scalar(f"tag:yaml.org,2002:{tag}", text)
        return representer.represent_float(value)

    dumper.add_representer(float, represent)
    try:
        yield
    finally:
        if not own:
            del dumper.yaml_representers
        elif previous is None:
            del dumper.yaml_representers[float]
        else:
            dumper.yaml_representers[float] = previous


def report(prog: str, fn: Callable[[], object], exit_on_error: bool = True) -> bool:
    """Run `fn`; a user-fixable error is one line and exit status 2, or with
    `exit_on_error=False` (one job of a sweep) one line and `False`. (Ctrl-C is
    handled once, in `glow_train.cli`, around the imports and the whole run.)"""
    try:
        fn()
        return True
    except GlowError as err:
        message = str(err)
    except OSError as err:  # e.g. an output path under a file, a read-only folder
        message = f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
    print(f"{prog}: error: {message}", file=sys.stderr)
    if exit_on_error:
        sys.exit(2)
    return False


#: the keys that choose a command's mode (or its input) rather than set one of its options
SELECTORS = ("ckpt", "mode", "backtest")


def typed_options(cfg: DictConfig) -> list[str]:
    """The options of `cfg` this command line sets, as typed (`temperature=0.5` ->
    `temperature`, `dataset.root=/x` -> `dataset.root`), besides the `SELECTORS`;
    empty outside a Hydra app (the Python API)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    keys = [override_key(o) for o in HydraConfig.get().overrides.task]
    return [k for k in keys if k.split(".", 1)[0] in cfg and k not in SELECTORS]


def override_key(override: str) -> str:
    """The key a command-line override sets: `+model.K=4` -> `model.K`."""
    return override.split("=", 1)[0].lstrip("+~")


def require_ckpt(cfg: DictConfig, prog: str) -> str:
    """The checkpoint file `ckpt=` names: for a run folder, its `best.pt` (else
    `last.pt`), which `say_which` reports once the command succeeded."""
    from glow_train.likelihood.loading import resolve_checkpoint  # PyTorch on use

    if cfg.ckpt is None:
        raise CheckpointError(f"no checkpoint given; run {prog} ckpt=runs/<dataset>/<time>/best.pt")
    return str(resolve_checkpoint(cfg.ckpt))


def say_precision(cfg: DictConfig, prog: str) -> None:
    """On stderr, once the command succeeded (an error stays one line), the precision
    `precision=` resolved to on `device=`, e.g. `glow-sample: precision auto -> bf16
    (CPU has native bf16)`; nothing for an explicit fp32 (glow-eval's default)."""
    if cfg.precision == "fp32":
        return
    from glow_train.runtime.distributed import resolve_device
    from glow_train.runtime.precision import INFERENCE_PRECISIONS, resolve_precision

    device = resolve_device(str(cfg.device))
    chosen = resolve_precision(str(cfg.precision), device, INFERENCE_PRECISIONS)
    print(f"{prog}: {chosen.describe()}", file=sys.stderr)


def say_which(cfg: DictConfig, used: str, prog: str) -> None:
    """On stderr, which checkpoint of a run folder was used (stdout stays the results)."""
    if used != str(cfg.ckpt):
        print(f"{prog}: used {used}", file=sys.stderr)
