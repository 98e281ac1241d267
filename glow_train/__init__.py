"""glow-train: train, sample and evaluate Glow normalizing flows on images.

Layout (data flows one way): ``config`` (typed schemas) and ``validate`` (checks
of single values) → ``data`` (sources, registry, batch, loader) + ``models``
(registry of flows built from ``flows``) → ``dequantize`` + ``objective`` (what
is optimised and reported) → ``scoring`` (every figure) → ``training`` (the
loop) → ``checkpoint`` (the file format) → ``inference`` (the one path from a
checkpoint to a ready objective) → ``sampling`` / ``evaluate`` / ``ood``;
``cli`` is the thin Hydra layer over them, one module per command.

The names below are imported on first use, so the console scripts start (and
answer Ctrl-C) before PyTorch is loaded.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Glow": "glow_train.models",
    "Glow1D": "glow_train.models",
    "Objective": "glow_train.objective",
    "bits_per_dim": "glow_train.objective",
    "dequantize": "glow_train.dequantize",
    "postprocess": "glow_train.dequantize",
    "preprocess": "glow_train.dequantize",
    "quantize": "glow_train.dequantize",
    "keep_freed_memory": "glow_train.runtime",
    "load": "glow_train.inference",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'glow_train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
