"""Models: `base` (what they share), `glow` (images), `glow1d` (vectors), `registry`."""

from glow_train.models.base import FlowModel
from glow_train.models.glow import Glow
from glow_train.models.glow1d import Glow1D
from glow_train.models.registry import MODELS, build_model, model_class, register_model

__all__ = ["FlowModel", "Glow", "Glow1D", "MODELS", "build_model", "model_class", "register_model"]
