"""One step of flow, shared by the image and the vector model."""

from __future__ import annotations

from glow_train.flows.actnorm import ActNorm
from glow_train.flows.base import FlowSequence
from glow_train.flows.coupling import Coupling
from glow_train.flows.invconv import InvertibleLinear

__all__ = ["FlowStep"]


class FlowStep(FlowSequence):
    """ActNorm → invertible 1×1 conv (a linear map on vectors) → coupling.

    Args:
        num_channels: ``C`` of ``(B, C, H, W)`` maps, or ``D`` of ``(B, D)`` vectors.
        hidden_channels: width of the coupling's conditioner.
        coupling: ``"affine"`` or ``"additive"``.
        lu: LU-parameterised channel mixing.
        dense: an MLP conditioner for vectors instead of convolutions.
        dropout: the convolutional conditioner's dropout (images).
        mlp: the MLP conditioner's options (see :func:`~glow_train.flows.coupling.mlp_conditioner`).
    """

    def __init__(
        self,
        num_channels: int,
        hidden_channels: int,
        coupling: str,
        lu: bool,
        dense: bool = False,
        mlp: dict | None = None,
        dropout: float = 0.0,
    ):
        super().__init__(
            [
                ActNorm(num_channels),
                InvertibleLinear(num_channels, lu=lu),
                Coupling(
                    num_channels, hidden_channels, coupling, dense=dense, mlp=mlp, dropout=dropout
                ),
            ]
        )
