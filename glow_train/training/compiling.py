"""Regional compilation of the training step (`train.compile`, `train.compile_mode`).

`torch.compile` is applied to each coupling layer (the layers whose class says so
with `compile_region = True`: the affine and additive `Coupling`), not to the whole
model. The couplings hold nearly all of a step's kernels (the conditioner's
convolutions, its casts under autocast and the elementwise tail of the affine
transform), and couplings of one shape share one compiled graph: a K=32, L=3 model
compiles three small graphs (one per level) instead of 96 unrolled steps. The folded
ActNorm and 1×1 convolution between couplings stay eager (a bias and a matrix
product per step).

Only the training step runs compiled. Evaluation, the checkpoint's health probe and
sampling run under `eager()` (`torch.compiler.set_stance("force_eager")`): switching
to evaluation mode or turning gradients off would otherwise fail the compiled
graphs' guards and compile them again. The EMA's copy of the model is made before
compilation and is never compiled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from glow_train.errors import ConfigError

__all__ = [
    "COMPILE_MODES",
    "check_compile",
    "compile_regions",
    "eager",
    "resolve_compile",
    "timed_warm_up",
]

#: `train.compile_mode`: `torch.compile`'s modes (`default`: its own default)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def check_compile(setting: bool | str, mode: str) -> None:
    """Raises `ConfigError` for a `train.compile` other than `true`, `false` or `auto`,
    or a `train.compile_mode` outside `COMPILE_MODES`."""
    if not (isinstance(setting, bool) or setting == "auto"):
        raise ConfigError(f"train.compile={setting!r}; use true, false or auto")
    if mode not in COMPILE_MODES:
        raise ConfigError(f"train.compile_mode={mode!r}; use {', '.join(COMPILE_MODES)}")


def resolve_compile(setting: bool | str, device: torch.device) -> bool:
    """`train.compile` (`true`, `false` or `auto`) on `device`: `auto` compiles on CUDA,
    where the eager step is limited by launching kernels, and not on the CPU, where
    compiling costs its time at every start for a step that is compute-bound there."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def compile_regions(module: nn.Module, mode: str) -> int:
    """Compile every coupling of `module` in place (`nn.Module.compile`, static shapes);
    returns how many were compiled."""
    regions = [m for m in module.modules() if getattr(m, "compile_region", False)]
    for region in regions:
        region.compile(mode=None if mode == "default" else mode, dynamic=False)
    return len(regions)


def eager() -> AbstractContextManager:
    """A context in which compiled regions run eagerly (evaluation, probes, sampling)."""
    stance = getattr(torch.compiler, "set_stance", None)  # PyTorch 2.6 and later
    return stance("force_eager") if stance is not None else nullcontext()


def timed_warm_up(step: Callable[[], None], device: torch.device) -> float:
    """Run `step` (a forward and backward pass of the training step) once and return its
    seconds, waiting for the device: the compilation of every region, measured."""
    started = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
