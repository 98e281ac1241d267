r"""Layers of a conditional density :math:`p(x \mid c)`: the context ``c`` enters
every coupling network and the prior through one shared encoder.

- :class:`ContextEncoder`: ``(B, C) -> (B, E)``, an MLP of the standardised
  context, run once per batch and shared by every layer below.
- :class:`ContextCoupling`: the affine coupling of
  :mod:`glow_train.flows.coupling` whose conditioner reads ``[x_a, h]`` (``h`` the
  encoding): :math:`z_b = (x_b + t(x_a, h))\,\sigma(s(x_a, h) + 2)`,
  :math:`\log|\det J| = \sum \log\sigma(s + 2)`; for a single dimension (``x_a``
  empty) it is an affine map of ``x`` whose shift and scale depend on ``h`` alone.
- :class:`ContextPrior`: :math:`\mathcal N(\mu(h), \mathrm{diag}\,e^{2\rho(h)})`,
  from a zero-initialised linear layer, so it starts as :math:`\mathcal N(0, I)`.

For a fixed context each layer is invertible in ``x``, so the change of variables
gives :math:`\log p(x \mid c) = \log p_Z(f(x; c) \mid c) + \log|\det \partial f / \partial x|`
(Winkler et al. 2019, "Learning likelihoods with conditional normalizing flows").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glow_train.flows.base import deinterleave, logdet_dtype
from glow_train.flows.conditioner import ACTIVATIONS, ZeroInit, mlp_conditioner

__all__ = ["ContextEncoder", "ContextCoupling", "ContextPrior"]


class ContextEncoder(nn.Sequential):
    """``(B, C)`` context -> ``(B, E)`` features: Linear → activation, twice."""

    def __init__(self, in_features: int, features: int, activation: str = "relu"):
        act = ACTIVATIONS[activation]
        super().__init__(
            nn.Linear(in_features, features), act(), nn.Linear(features, features), act()
        )


class ContextCoupling(nn.Module):
    """Affine coupling of ``(B, D)`` given context features ``h`` ``(B, E)``.

    Args:
        num_features: ``D`` (1 or more; ``D // 2`` dimensions condition the rest).
        context_features: ``E``.
        hidden_features, mlp: the conditioner's width and options
            (:func:`~glow_train.flows.conditioner.mlp_conditioner`).
    """

    def __init__(self, num_features: int, context_features: int, hidden_features: int, mlp: dict):
        super().__init__()
        self.split = num_features // 2
        changed = num_features - self.split
        self.net = mlp_conditioner(
            self.split + context_features, hidden_features, 2 * changed, **mlp
        )

    def _shift_and_log_scale(self, x_a: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(torch.cat([x_a, h.to(x_a.dtype)], dim=1)).to(x_a.dtype)
        shift, raw = deinterleave(out)
        return shift, F.logsigmoid(raw.to(logdet_dtype(x_a)) + 2.0)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(x (B, D), h (B, E)) -> (z (B, D), log|det dz/dx| (B,))``."""
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        shift, log_scale = self._shift_and_log_scale(x_a, h)
        z_b = (x_b + shift) * log_scale.exp().to(x.dtype)
        return torch.cat([x_a, z_b], dim=1), log_scale.sum(dim=1)

    def inverse(self, z: Tensor, h: Tensor) -> Tensor:
        z_a, z_b = z[:, : self.split], z[:, self.split :]
        shift, log_scale = self._shift_and_log_scale(z_a, h)
        return torch.cat([z_a, z_b * torch.exp(-log_scale).to(z.dtype) - shift], dim=1)


class ContextPrior(nn.Module):
    """Diagonal Gaussian over ``(B, D)`` whose mean and log-scale are linear in ``h``
    (zero-initialised: N(0, I) until trained)."""

    def __init__(self, num_features: int, context_features: int):
        super().__init__()
        self.num_features = num_features
        self.params = ZeroInit(nn.Linear(context_features, 2 * num_features))

    def mean_and_log_scale(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_scale = self.params(h).chunk(2, dim=1)
        return mean, log_scale

    def log_prob(self, z: Tensor, h: Tensor) -> Tensor:
        """Per-item log-density in at least float32, ``(B,)``."""
        mean, log_scale = self.mean_and_log_scale(h)
        dtype = logdet_dtype(z)
        z, mean, log_scale = z.to(dtype), mean.to(dtype), log_scale.to(dtype)
        e = (z - mean) * torch.exp(-log_scale)
        return (-0.5 * e.pow(2) - log_scale - 0.5 * math.log(2 * math.pi)).sum(dim=1)

    def sample(
        self, h: Tensor, temperature: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """One draw per row of ``h``, the scale multiplied by ``temperature``."""
        mean, log_scale = self.mean_and_log_scale(h)
        eps = torch.randn(mean.shape, generator=generator, device=h.device, dtype=mean.dtype)
        return mean + temperature * torch.exp(log_scale) * eps
