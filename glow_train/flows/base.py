r"""The layer protocol shared by every flow in glow-train.

A flow layer is a bijection :math:`f` from data towards the latent space. Its
``forward(x)`` returns ``(z, logdet)`` with :math:`z = f(x)` and
:math:`\mathrm{logdet} = \log |\det \partial f / \partial x|` per sample, shape ``(B,)``;
``inverse(z)`` returns :math:`f^{-1}(z)`. By the change of variables,
:math:`\log p_X(x) = \log p_Z(f(x)) + \log|\det J_f(x)|`, so log-determinants
of a chain of layers add up (:class:`FlowSequence`).

Precision: log-determinants are returned in at least float32, and the main
stream ``x``/``z`` keeps the dtype it came in with even under ``torch.autocast``;
only the coupling conditioners (plain networks) run in reduced precision.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

from glow_train.flows.recompute import run_with_inversion

__all__ = ["Flow", "FlowSequence", "logdet_dtype", "autocast_off"]


def logdet_dtype(x: Tensor) -> torch.dtype:
    """dtype for log-determinants of ``x``: float64 stays float64, anything else float32."""
    return torch.promote_types(x.dtype, torch.float32)


def autocast_off(x: Tensor) -> AbstractContextManager:
    """A context that disables autocast on ``x``'s device type (for exact linear algebra)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


class Flow(nn.Module):
    """Base class: ``forward(x) -> (z, logdet)`` and ``inverse(z) -> x``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class FlowSequence(Flow):
    """Runs flows in order; the log-determinant is the sum of the layers' ones.

    With ``memory_saving = True`` (and gradients enabled) the backward pass
    recomputes each layer's input from its output by inversion instead of keeping
    every activation (:mod:`glow_train.flows.recompute`).
    """

    def __init__(self, flows: Iterable[Flow]):
        super().__init__()
        self.flows = nn.ModuleList(flows)
        self.memory_saving = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.memory_saving and torch.is_grad_enabled():
            return run_with_inversion(self, x)
        return self.forward_plain(x)

    def forward_plain(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The forward pass with plain autograd (every activation kept)."""
        logdet = x.new_zeros(x.shape[0], dtype=logdet_dtype(x))
        for flow in self.flows:
            x, ld = flow(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        for flow in reversed(self.flows):
            z = flow.inverse(z)
        return z

    def __len__(self) -> int:
        return len(self.flows)

    def __iter__(self):
        return iter(self.flows)
