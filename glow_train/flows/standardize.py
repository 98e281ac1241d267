r"""Standardisation with fixed statistics, as a layer of the density.

$z = (x - \mu) / \sigma$ per dimension, with $\mu, \sigma$ the training
split's mean and standard deviation (`(D,)` buffers, saved with the model).
$\log|\det J| = -\sum_d \log \sigma_d$, so a flow on `z` gives
$\log p(x) = \log p(z) - \sum_d \log\sigma_d$: the likelihood of the data in
its own units, not of the standardised numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from glow_train.flows.base import Flow, logdet_dtype

__all__ = ["Standardize"]


class Standardize(Flow):
    """`(B, D) -> (B, D)`: subtract `loc`, divide by `scale` (both fixed buffers).

    Args:
        loc: `(D,)` means.
        scale: `(D,)` standard deviations, all > 0.
    """

    def __init__(self, loc: Sequence[float] | Tensor, scale: Sequence[float] | Tensor):
        super().__init__()
        loc = torch.as_tensor(loc, dtype=torch.float64)
        scale = torch.as_tensor(scale, dtype=torch.float64)
        if loc.shape != scale.shape or loc.dim() != 1:
            raise ValueError("loc and scale must both be (D,)")
        if not bool((scale > 0).all()):
            raise ValueError("every scale must be > 0")
        # float64 buffers: the statistics are exact whatever the model's dtype
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)

    @classmethod
    def placeholder(cls, dim: int) -> Standardize:
        """An identity of `dim` dimensions, for `load_state_dict` to fill."""
        return cls(torch.zeros(dim), torch.ones(dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(z, logdet)`: `z = (x - loc) / scale`; `logdet = -Σ log scale` per item."""
        z = (x - self.loc.to(x.dtype)) / self.scale.to(x.dtype)
        logdet = -torch.log(self.scale).sum().to(logdet_dtype(x))
        return z, logdet.expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        """`x = z · scale + loc`."""
        return z * self.scale.to(z.dtype) + self.loc.to(z.dtype)
