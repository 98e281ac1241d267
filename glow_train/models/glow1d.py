"""1-D Glow for vectors: K × [ActNorm, LU linear map, MLP coupling], no squeeze."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from glow_train.config import Glow1DConfig
from glow_train.data.spec import DataSpec
from glow_train.flows import FlowStep, FlowSteps, LearnedPrior
from glow_train.models.base import FlowModel, check_coupling, check_positive

__all__ = ["Glow1D"]


class Glow1D(FlowModel):
    """Glow for vectors ``(B, D)`` (``model=glow1d``).

    The same steps of flow as :class:`glow_train.Glow` with dense layers: ActNorm
    per feature, an invertible linear map, an MLP coupling; one learned Gaussian
    prior on the output. Every hyperparameter is required (the config group's
    YAML holds the defaults).

    Args:
        dim: ``D`` (at least 2; from the dataset).
        K: number of steps.
        hidden_features: width of the MLP conditioners.
        coupling: ``"affine"`` or ``"additive"``.
        hidden_layers: hidden layers per MLP conditioner.
        activation: ``relu``, ``elu``, ``gelu`` or ``tanh``.
        dropout: dropout probability after each hidden layer (training mode only).
        lu: LU-parameterised linear maps.
        num_classes: if > 0, the prior is class-conditional.
    """

    name = "glow1d"
    schema = Glow1DConfig

    def __init__(
        self,
        dim: int,
        K: int,
        hidden_features: int,
        coupling: str,
        lu: bool,
        num_classes: int = 0,
        hidden_layers: int = 2,
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__()
        check_positive(K=K, hidden_features=hidden_features, hidden_layers=hidden_layers)
        check_coupling(coupling)
        if dim < 2:
            raise ValueError(f"dim must be at least 2, got {dim}")
        self.config = dict(
            dim=dim,
            K=K,
            hidden_features=hidden_features,
            coupling=coupling,
            lu=lu,
            num_classes=num_classes,
            hidden_layers=hidden_layers,
            activation=activation,
            dropout=float(dropout),
        )
        self.num_dims = dim
        self.num_classes = num_classes
        mlp = dict(hidden_layers=hidden_layers, activation=activation, dropout=float(dropout))
        self.flow = FlowSteps(
            FlowStep(dim, hidden_features, coupling, lu, dense=True, mlp=mlp) for _ in range(K)
        )
        self.prior = LearnedPrior((dim,), num_classes=num_classes)

    @classmethod
    def for_data(cls, spec: DataSpec, options: dict[str, Any]) -> Glow1D:
        """``dim`` from a vector spec; ``options`` are ``model.*``."""
        if spec.kind != "vector":
            raise ValueError(f"model=glow1d needs vector data, got {spec.kind} data")
        return cls(dim=spec.num_dims, **options)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, D)`` → ``(z (B, D), log|det J| (B,))``."""
        return self.flow(x)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Per-vector log-density in nats, shape ``(B,)``."""
        z, logdet = self.flow(x)
        return self.prior.log_prob(z, y) + logdet

    def class_log_probs(self, x: Tensor) -> Tensor:
        r""":math:`\log p(x \mid y=k)` for every class ``k``, ``(B, num_classes)``: one
        pass of the flow, one evaluation of the prior per class."""
        self.require_classes()
        z, logdet = self.flow(x)
        columns = [
            self.prior.log_prob(z, self.class_column(z, k)) + logdet
            for k in range(self.num_classes)
        ]
        return torch.stack(columns, dim=1)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.flow.inverse(z)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """``n`` vectors ``(n, D)``, the prior's std scaled by ``temperature``."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        return self.flow.inverse(self.prior.sample(n, y, temperature, generator))
