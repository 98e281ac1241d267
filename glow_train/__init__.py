"""glow-train: train, sample and evaluate Glow normalizing flows on images.

Layout (data flows one way): ``config`` (typed schemas) → ``data`` (sources,
registry, batch, loader) + ``models`` (registry of flows built from ``flows``)
→ ``dequantize`` + ``objective`` (what is optimised and reported) →
``training`` (the loop) → ``checkpoint`` → ``sample`` / ``evaluate``; ``cli`` is
the thin Hydra layer over them.
"""

from glow_train.dequantize import dequantize, postprocess, preprocess, quantize
from glow_train.models import Glow, Glow1D
from glow_train.objective import Objective, bits_per_dim

__version__ = "0.1.0"

__all__ = [
    "Glow",
    "Glow1D",
    "Objective",
    "bits_per_dim",
    "dequantize",
    "postprocess",
    "preprocess",
    "quantize",
    "__version__",
]
