"""The shape of a command's modes: one function `(ckpt, **options) -> Written` each,
registered by name.

`glow-sample mode=<name>` runs `glow_train.sampling.registry.MODES` and
`glow-eval backtest=<name>` `glow_train.series.registry.BACKTESTS`, both
through `run_registered`: it passes a mode only the options its signature
names (the command's other keys are for other modes), and the command prints the
`Written`'s `lines`. A new mode is one function and its entry
in the registry.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glow_train.errors import ConfigError

__all__ = ["Mode", "Written", "run_registered", "takes"]


@dataclass
class Written:
    """What a mode wrote (`paths`) and anything else it has to say (`notes`).

    `text`: the lines that stand for the files when the mode describes them itself
    (e.g. `forecast.csv (30 paths of 7 steps, in prices)`); `None`: the paths,
    one per line.
    """

    paths: list[Path]
    notes: list[str] = field(default_factory=list)
    text: list[str] | None = None

    def lines(self) -> list[str]:
        """What the command prints: the files (or `text`), then the notes."""
        files = self.text if self.text is not None else [str(p) for p in self.paths]
        return [*files, *self.notes]


#: a mode: `(ckpt, **options) -> Written` (or a list of the paths it wrote)
Mode = Callable[..., Written | list[Path]]


def takes(mode: Mode, option: str) -> bool:
    """Whether `mode`'s signature names `option`."""
    return option in inspect.signature(mode).parameters


def run_registered(
    registry: Mapping[str, Mode],
    name: str,
    ckpt: str | os.PathLike,
    options: Mapping[str, Any],
    unknown: str,
    typed: Iterable[str] = (),
) -> Written:
    """Run `registry[name]` on `ckpt` with the `options` its signature takes;
    `unknown` is the one-line `ConfigError` for a name not registered. An
    option in `typed` (those the command line set) that the mode does not take
    would be ignored: refused in one line naming the options the mode takes."""
    if name not in registry:
        raise ConfigError(unknown)
    function = registry[name]
    accepted = inspect.signature(function).parameters
    unused = [key for key in typed if key not in accepted]
    if unused:
        takes_options = ", ".join(list(accepted)[1:])  # after ckpt
        raise ConfigError(
            f"{unused[0]}= is not an option of mode={name} (it takes {takes_options}); "
            f"leave {unused[0]}= out"
        )
    result = function(ckpt, **{k: v for k, v in options.items() if k in accepted})
    return result if isinstance(result, Written) else Written(list(result))
