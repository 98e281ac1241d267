"""glow-train: train, sample and evaluate Glow normalizing flows on images."""

from glow_train.likelihood import bits_per_dim, dequantize, postprocess, preprocess, quantize
from glow_train.model import Glow, Glow1D

__version__ = "0.1.0"

__all__ = [
    "Glow",
    "Glow1D",
    "bits_per_dim",
    "dequantize",
    "postprocess",
    "preprocess",
    "quantize",
    "__version__",
]
