"""The command-line layer: the console scripts' entry points, `glow-train`,
`glow-sample` and `glow-eval`, one module per command (`train`,
`sample`, `eval`), each a Hydra app that
calls one library function and prints what it returns; what they share is in
`common`.

Ctrl-C at any moment, start-up included, ends with one line
(`glow-train: aborted`) and exit status 130. The command line is checked against
the configs first, with Hydra and OmegaConf alone, so `--help`, `--cfg` and a
refused option answer without loading PyTorch. Until that check is done and the heavy
modules are loaded (PyTorch, TensorBoard), an interrupt is only noted, because an
import, or a library catching broad exceptions, can swallow the `KeyboardInterrupt` it
would raise; it takes effect as soon as start-up is over.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib import import_module

__all__ = ["train_main", "sample_main", "eval_main"]

#: what each command loads before it runs (its slow imports); the first is its app's module
_MODULES = {
    "train": ("glow_train.cli.train", "glow_train.training", "torch.utils.tensorboard"),
    "sample": ("glow_train.cli.sample", "glow_train.sampling"),
    "eval": ("glow_train.cli.eval", "glow_train.evaluation.figures", "glow_train.evaluation.ood"),
}


@contextmanager
def _interrupts_noted() -> Iterator[None]:
    """SIGINT noted rather than raised inside the block, and raised as
    `KeyboardInterrupt` at its end: an import (or a library catching broad exceptions
    while it composes or loads) can swallow the `KeyboardInterrupt` it would raise."""
    pending: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except ValueError:  # not the main thread: nothing to guard
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _warnings_as_lines(prog: str) -> None:
    """Show warnings as `<prog>: warning: <message>`, one line, without the source
    line and path of the code that raised them."""
    import warnings

    def one_line(message, category, filename, lineno, line=None):
        return f"{prog}: warning: {str(message).splitlines()[0] if str(message) else category}\n"

    warnings.formatwarning = one_line


#: Hydra's flags that print something and run no task: no heavy import is needed
_HYDRA_ONLY = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i")
_HYDRA_ONLY += ("--shell-completion", "-sc")


def _hydra_only(args: list[str]) -> bool:
    """Whether the command line only asks Hydra for help, the config or its info."""
    return any(arg in _HYDRA_ONLY or arg.startswith(("--cfg=", "--info=")) for arg in args)


def _run(config_name: str, prog: str) -> None:
    try:  # from the first line: an interrupt anywhere in start-up is one line
        with _interrupts_noted():  # start-up: the command line checked, the modules loaded
            from glow_train.runtime.memory import keep_freed_memory

            keep_freed_memory()  # before the first tensor: see glow_train.runtime.memory
            _warnings_as_lines(prog)
            from glow_train.cli.common import check_command_line, whole_numbers_in_yaml

            check_command_line(config_name, prog)  # Hydra, OmegaConf: light
            only_hydra = _hydra_only(sys.argv[1:])
            app = import_module(_MODULES[config_name][0]).app
            for name in () if only_hydra else _MODULES[config_name][1:]:
                import_module(name)
        # --help, --cfg: `val_size: 200`, not `200.0`
        with whole_numbers_in_yaml() if only_hydra else nullcontext():
            app()
    except KeyboardInterrupt:
        print(f"{prog}: aborted", file=sys.stderr)
        sys.exit(130)


def train_main() -> None:
    """Entry point of `glow-train`."""
    _run("train", "glow-train")


def sample_main() -> None:
    """Entry point of `glow-sample`."""
    _run("sample", "glow-sample")


def eval_main() -> None:
    """Entry point of `glow-eval`."""
    _run("eval", "glow-eval")
