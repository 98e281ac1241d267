"""Flow layers: each maps `forward(x) -> (z, logdet)` and `inverse(z) -> x`.

`base` (the protocol, `FlowSequence`), `actnorm`, `invconv` (1×1
convolution / linear map), `coupling` (and the conditioners: `conditioner`, and
`conv_attention` for Flow++'s gated residual and attention blocks),
`logistic_mixture` (Flow++'s mixture-of-logistics CDF coupling of images), `spline` (the
rational-quadratic spline coupling of vectors), `step` (one step of flow),
`priors`, `mixture` (the mixture priors), `squeeze` (the reshapes between
scales) and `recompute` (the memory-saving backward pass).
"""

from glow_train.flows.actnorm import ActNorm
from glow_train.flows.base import Flow, FlowSequence
from glow_train.flows.coupling import Coupling
from glow_train.flows.invconv import InvertibleLinear
from glow_train.flows.logistic_mixture import LogisticMixtureCoupling
from glow_train.flows.mixture import MixturePrior
from glow_train.flows.priors import GaussianPrior, LearnedPrior, SplitPrior, StudentTPrior
from glow_train.flows.spline import SplineCoupling
from glow_train.flows.squeeze import squeeze2d, unsqueeze2d
from glow_train.flows.standardize import Standardize
from glow_train.flows.step import FlowStep, FlowSteps

__all__ = [
    "Standardize",
    "ActNorm",
    "Coupling",
    "Flow",
    "FlowSequence",
    "FlowStep",
    "FlowSteps",
    "GaussianPrior",
    "InvertibleLinear",
    "LearnedPrior",
    "LogisticMixtureCoupling",
    "MixturePrior",
    "SplineCoupling",
    "StudentTPrior",
    "SplitPrior",
    "squeeze2d",
    "unsqueeze2d",
]
