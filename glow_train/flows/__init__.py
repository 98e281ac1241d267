"""Flow layers: each maps ``forward(x) -> (z, logdet)`` and ``inverse(z) -> x``."""

from glow_train.flows.actnorm import ActNorm
from glow_train.flows.base import Flow, FlowSequence
from glow_train.flows.coupling import Coupling
from glow_train.flows.invconv import InvConv1x1, InvertibleLinear
from glow_train.flows.priors import GaussianPrior, LearnedPrior, SplitPrior
from glow_train.flows.squeeze import Squeeze

__all__ = [
    "ActNorm",
    "Coupling",
    "Flow",
    "FlowSequence",
    "GaussianPrior",
    "InvConv1x1",
    "InvertibleLinear",
    "LearnedPrior",
    "SplitPrior",
    "Squeeze",
]
