"""glow-train: train, sample and evaluate Glow normalizing flows on images, tables and series.

Layout, lowest layer first (data flows one way): `errors`, `config`, `validate`,
`modes` → `io` (checkpoint format, output policy) → `flows` (layers) → `runtime`
(devices, processes, precision) → `data` → `models` → `likelihood` (dequantisation,
objective, loading a checkpoint) → `evaluation` / `series` / `sampling` → `training`;
`cli` is the thin Hydra layer over them, one module per command.

The names below are imported on first use, so the console scripts start (and
answer Ctrl-C) before PyTorch is loaded.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Glow": "glow_train.models",
    "Glow1D": "glow_train.models",
    "Objective": "glow_train.likelihood.objective",
    "bits_per_dim": "glow_train.likelihood.objective",
    "dequantize": "glow_train.likelihood.dequantize",
    "postprocess": "glow_train.likelihood.dequantize",
    "preprocess": "glow_train.likelihood.dequantize",
    "quantize": "glow_train.likelihood.dequantize",
    "keep_freed_memory": "glow_train.runtime.memory",
    "load": "glow_train.likelihood.loading",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'glow_train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
