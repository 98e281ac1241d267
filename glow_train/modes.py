"""A command's options as one object, and the shape of its modes.

The options of `glow-sample` and `glow-eval` are declared once, in their schemas
(`glow_train.config.SampleConfig`, `glow_train.config.EvalConfig`) with their values in
`configs/sample.yaml` and `configs/eval.yaml`. `command_options` builds the object a
mode runs with: the YAML's values, a given object or config on top, then keyword
overrides, typed and checked once (the `checked` rules of the schema).

A mode is a function `run(ckpt, opts)` made into one with `command_mode`, which
declares the options it uses. It is then called as `fn(ckpt, options=cfg)` by its
command, or as `fn(ckpt, *positional, **overrides)` from Python; an option it does
not use, set on the command line or passed as a keyword, is refused in one line
(`refuse_unused`) instead of being ignored. `glow-sample mode=<name>` runs
`glow_train.sampling.registry.MODES` and `glow-eval backtest=<name>`
`glow_train.series.registry.BACKTESTS` through `run_registered`; `glow-eval` without
`backtest=` runs `glow_train.evaluation.figures.evaluate` or, with `ood=`,
`glow_train.evaluation.ood.evaluate_ood`, two modes of the same kind. The command
prints the `Written.lines` of what the mode wrote. A new mode is one function and
its entry in the registry; a new option is one field of the schema and its value in
the YAML, and the modes that use it name it.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from glow_train.config import EvalConfig, SampleConfig, packaged_defaults, typed
from glow_train.errors import ConfigError
from glow_train.validate import require_int, require_numbers

__all__ = [
    "COMMANDS",
    "Mode",
    "Written",
    "check_option",
    "command_mode",
    "command_options",
    "refuse_unused",
    "run_registered",
]

#: the commands with modes: the name of their YAML file -> their schema
COMMANDS: dict[str, type] = {"sample": SampleConfig, "eval": EvalConfig}


def command_options(
    command: str, given: Any = None, overrides: Mapping[str, Any] | None = None
) -> Any:
    """The options object of `command` (`"sample"` or `"eval"`), checked.

    Args:
        command: the name of the command's YAML file and key of `COMMANDS`.
        given: an object of the command's schema, a composed config (a `DictConfig`)
            or a mapping of some of its keys; `None`: the YAML's values alone.
        overrides: keys set on top; a `None` value stands for "leave as it is".

    Returns:
        An instance of the command's schema (`SampleConfig` or `EvalConfig`), every
        value typed and checked by its field's `checked` rule (a list of numbers
        turned into a list of floats).

    Raises:
        ConfigError: an unknown key, a value of the wrong type or out of its range,
            in one line naming the option.
    """
    schema = COMMANDS[command]
    values = OmegaConf.to_container(packaged_defaults(command, schema))
    given = {k: _plain(v) for k, v in _container(given).items()}
    overrides = {k: _plain(v) for k, v in (overrides or {}).items() if v is not None}
    opts = OmegaConf.to_object(typed(schema, OmegaConf.merge(values, given, overrides)))
    for entry in fields(opts):
        rule = entry.metadata.get("check")
        if rule:
            value = getattr(opts, entry.name)
            setattr(opts, entry.name, _check(entry.name, value, rule, entry.default))
    return opts


def _plain(value: Any) -> Any:
    """A path as its string, a device (or any object OmegaConf does not hold) as its
    name; numbers, strings, lists and mappings as they are."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, str | int | float | bool | list | tuple | Mapping):
        return value
    return str(value)


def _container(given: Any) -> dict[str, Any]:
    """`given` (None, a dataclass instance, a DictConfig or a mapping) as a plain dict."""
    if given is None:
        return {}
    if is_dataclass(given):
        given = OmegaConf.structured(given)
    if isinstance(given, DictConfig):
        return OmegaConf.to_container(given, resolve=True)
    return dict(given)


def check_option(command: str, name: str, value: Any) -> Any:
    """`value` of `command`'s option `name` checked by its schema field's `checked` rule,
    as `command_options` checks it: for a library function that takes the option as an
    argument of its own (e.g. `glow_train.series.backtest.backtest`'s `samples`), so the
    range and its message live in one place, the schema.

    Raises:
        ConfigError: the value out of the rule's range, in one line naming the option.
    """
    entry = next(f for f in fields(COMMANDS[command]) if f.name == name)
    return _check(name, value, entry.metadata["check"], entry.default)


def _check(name: str, value: Any, rule: Mapping[str, Any], default: Any) -> Any:
    """`value` of the option `name` checked by its schema field's `rule`."""
    try:
        if "choices" in rule:
            if value not in rule["choices"]:
                choices = ", ".join(rule["choices"])
                raise ConfigError(f"{name} must be one of {choices}, got {value!r}")
            return value
        if "example" in rule:
            return require_numbers(name, value, rule["example"], rule.get("low"))
        return require_int(name, value, rule["low"], rule.get("high"), allow_none=default is None)
    except ConfigError as err:
        if "why" not in rule:
            raise
        raise ConfigError(f"{err} ({rule['why']})") from None


@dataclass
class Written:
    """What a mode wrote (`paths`) and anything else it has to say (`notes`).

    `text`: the lines that stand for the files when the mode describes them itself
    (e.g. `forecast.csv (30 paths of 7 steps, in prices)`); `None`: the paths, one per
    line.
    """

    paths: list[Path]
    notes: list[str] = field(default_factory=list)
    text: list[str] | None = None

    def lines(self) -> list[str]:
        """What the command prints: the files (or `text`), then the notes."""
        files = self.text if self.text is not None else [str(p) for p in self.paths]
        return [*files, *self.notes]


#: a mode: made by `command_mode`; `fn(ckpt, *positional, options=None, **overrides)`,
#: with the attributes `command`, `label`, `uses` and `run` (the function it wraps)
Mode = Callable[..., Any]


def command_mode(
    command: str, label: str, uses: Iterable[str], positional: tuple[str, ...] = ()
) -> Callable[[Callable[[Any, Any], Any]], Mode]:
    """Make `run(ckpt, opts)` a mode of `command` that uses the options `uses`.

    The mode is called as `fn(ckpt, *values, options=None, **overrides)`: `values` are
    the options named in `positional`, in order; `options` the command's composed
    config or an options object; `overrides` single options. It builds the options
    object once (`command_options`) and runs `run` with it. An override (not `None`)
    that `uses` does not name is refused (`refuse_unused`).

    Args:
        command: `"sample"` or `"eval"` (`COMMANDS`).
        label: how the mode is named in a refusal, e.g. `mode=forecast`.
        uses: the options `run` reads, in the order a refusal lists them.
        positional: options that may be passed by position after `ckpt`.
    """
    uses = tuple(uses)

    def make(run: Callable[[Any, Any], Any]) -> Mode:
        @functools.wraps(run)
        def mode(ckpt: str | os.PathLike, *values: Any, options: Any = None, **overrides: Any):
            if len(values) > len(positional):
                count = len(positional)
                raise TypeError(f"{run.__name__} takes at most {count} options by position")
            overrides = {**dict(zip(positional, values, strict=False)), **overrides}
            refuse_unused(mode, [k for k, v in overrides.items() if v is not None])
            return run(ckpt, command_options(command, options, overrides))

        del mode.__wrapped__  # the signature is the mode's, not run's
        params = [inspect.Parameter("ckpt", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        params += [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
            for name in positional
        ]
        params += [
            inspect.Parameter("options", inspect.Parameter.KEYWORD_ONLY, default=None),
            inspect.Parameter("overrides", inspect.Parameter.VAR_KEYWORD),
        ]
        mode.__signature__ = inspect.Signature(params)
        mode.command, mode.label, mode.uses, mode.run = command, label, uses, run
        return mode

    return make


def refuse_unused(mode: Mode, keys: Iterable[str]) -> None:
    """Refuse, in one line, the first of `keys` (options as the user set them:
    `dataset.root` counts as `dataset`) that `mode` does not use."""
    for key in keys:
        if key.split(".", 1)[0] not in mode.uses:
            raise ConfigError(
                f"{key}= is not an option of {mode.label} (it takes {', '.join(mode.uses)}); "
                f"leave {key}= out"
            )


def run_registered(
    registry: Mapping[str, Mode],
    name: str,
    ckpt: str | os.PathLike,
    options: Any,
    unknown: str,
    typed: Iterable[str] = (),
) -> Written:
    """Run `registry[name]` on `ckpt` with `options` (the command's config or an options
    object). `unknown` is the one-line `ConfigError` for a name not registered; an
    option in `typed` (those the command line set) that the mode does not use is
    refused (`refuse_unused`) before anything runs."""
    if name not in registry:
        raise ConfigError(unknown)
    mode = registry[name]
    refuse_unused(mode, typed)
    result = mode(ckpt, options=options)
    return result if isinstance(result, Written) else Written(list(result))
