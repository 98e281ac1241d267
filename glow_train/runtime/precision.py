"""The floating-point precision a command runs in: `precision=auto|fp32|bf16|fp16`.

`bf16` and `fp16` run the model under `torch.autocast`: only the coupling
conditioners (plain networks) compute in reduced precision; the stream between
layers, the log-determinants, the priors' log-densities and the per-item likelihood
sums stay in float32 or float64 (`glow_train.flows.base`).

`auto` chooses bfloat16 where the device computes it natively and float32
elsewhere:

- CUDA: `torch.cuda.is_bf16_supported(including_emulation=False)` (Ampere and later);
- CPU: `glow_train.flows.fused.CPU_NATIVE_BF16` (oneDNN's own check: AVX-512
  BW/VL/DQ, AVX-NE-CONVERT or AMX on x86);
- any other device: float32.

The environment variable `GLOW_TRAIN_AUTO_PRECISION=fp32` makes `auto` choose float32
on every device, whatever it computes natively (`make test-fp32` runs the test suite
so, as on a CPU without native bfloat16); an explicit `precision=bf16` is unchanged.

An explicit `bf16` on a device without native bfloat16 still runs (PyTorch
emulates it through the plain layers), only slower than float32;
`Precision.describe` says so in one line.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from glow_train.errors import ConfigError
from glow_train.flows import fused

__all__ = [
    "Precision",
    "forced_auto",
    "native_bf16",
    "resolve_precision",
    "AMP_DTYPES",
    "FORCE_VARIABLE",
    "INFERENCE_PRECISIONS",
]

#: the autocast dtype of each resolved precision (None: no autocast)
AMP_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

#: the precisions glow-sample and glow-eval take besides auto
INFERENCE_PRECISIONS = ("fp32", "bf16")

#: the environment variable that makes `precision=auto` choose float32 everywhere
FORCE_VARIABLE = "GLOW_TRAIN_AUTO_PRECISION"


@dataclass(frozen=True)
class Precision:
    """A resolved precision: `name` runs; `requested` is what the user asked
    (`auto` or `name` itself); `native` whether the device computes bfloat16
    natively; `device` the kind of device (`"CPU"`, `"GPU"`, ...)."""

    name: str
    requested: str
    native: bool
    device: str
    forced: bool = False  # auto's choice was set by `GLOW_TRAIN_AUTO_PRECISION`

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype (`None` for float32)."""
        return AMP_DTYPES[self.name]

    def autocast(self, device_type: str) -> AbstractContextManager:
        """`torch.autocast` in `amp_dtype` on `device_type`, or a null context."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.amp_dtype)

    def describe(self) -> str:
        """One line for a command's start-up report, e.g.
        `precision auto -> bf16 (CPU has native bf16)`."""
        has = "has" if self.native else "has no"
        if self.forced:
            return f"precision auto -> {self.name} ({FORCE_VARIABLE}={self.name})"
        if self.requested == "auto":
            return f"precision auto -> {self.name} ({self.device} {has} native bf16)"
        if self.name == "bf16" and not self.native:
            return (
                f"precision bf16 (note: this {self.device} has no native bf16, so bf16 runs "
                "emulated and slower than fp32 here; precision=auto chooses for you)"
            )
        return f"precision {self.name}"


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether `device` computes bfloat16 natively, and what to call the device."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.cuda.device(index):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False)), "GPU"
    if device.type == "cpu":
        return fused.CPU_NATIVE_BF16, "CPU"
    return False, device.type


def resolve_precision(
    requested: str, device: torch.device | str, allowed: tuple[str, ...] = tuple(AMP_DTYPES)
) -> Precision:
    """`precision=requested` on `device` as a `Precision`.

    `allowed`: the explicit precisions the command takes (`auto` is always taken).

    Raises:
        ConfigError: a precision outside `allowed` and `auto`, or fp16 off CUDA.
    """
    device = torch.device(device)
    if requested != "auto" and requested not in allowed:
        raise ConfigError(f"precision={requested} is not one of auto, {', '.join(allowed)}")
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("precision=fp16 needs a CUDA device; use precision=bf16 or auto on CPU")
    native, name = native_bf16(device)
    forced = requested == "auto" and forced_auto() is not None
    chosen = ("bf16" if native else "fp32") if requested == "auto" else requested
    return Precision("fp32" if forced else chosen, requested, native, name, forced)


def forced_auto() -> str | None:
    """What `GLOW_TRAIN_AUTO_PRECISION` makes `precision=auto` choose (`None`: unset).

    Returns:
        `"fp32"`, or `None` when the variable is unset or empty.

    Raises:
        ConfigError: any other value.
    """
    value = os.environ.get(FORCE_VARIABLE, "").strip()
    if not value:
        return None
    if value != "fp32":
        raise ConfigError(
            f"{FORCE_VARIABLE}={value} is not fp32; unset it to let precision=auto choose"
        )
    return value
