r"""One step of flow, shared by the image and the vector model.

ActNorm followed by the invertible 1×1 convolution is one affine map per position,
:math:`z = W\,\mathrm{diag}(s)\,(x + b) = W'(x + b)` with
:math:`W' = W\,\mathrm{diag}(s)`, so :class:`FlowStep` applies both as one bias
addition and one matrix product (:func:`~glow_train.flows.base.channel_linear`)
instead of an addition, a multiplication and the product, and inverts them as one:
:math:`x = \mathrm{diag}(1/s)\,W^{-1} z - b`. :math:`W'` is formed on the ``C×C``
parameters, never on the activations; the bias is added before the product, as
ActNorm adds it (as :math:`W'x + W'b` the two terms would cancel when ``|b|`` is large
against the spread of ``x``). The log-determinant is that of the two layers,
:math:`N_\text{sp}(\sum_c \log s_c + \log|\det W|)`. The layers (and their state
dict) stay as they are; ActNorm's data-dependent initialisation runs them one by one,
and the memory-saving backward inverts the pair as one layer. Forward hooks on the
ActNorm and the 1×1 convolution do not fire (the step does not call them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from glow_train.flows.actnorm import ActNorm
from glow_train.flows.base import Flow, FlowSequence, autocast_off, channel_linear
from glow_train.flows.coupling import Coupling
from glow_train.flows.invconv import InvertibleLinear

__all__ = ["FlowStep"]


class _NormThenMix(Flow):
    """The ActNorm and 1×1 convolution of one :class:`FlowStep` as one layer.

    Not a submodule of the step (the state dict keeps the two layers' own keys): the
    step holds it outside the module tree and runs it; the memory-saving backward
    inverts and recomputes it as one layer.
    """

    def __init__(self, norm: ActNorm, mix: InvertibleLinear):
        super().__init__()
        self.norm, self.mix = norm, mix

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        norm, mix = self.norm, self.mix
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        with autocast_off(x):
            w = mix.weight_matrix(dtype) * norm.log_scale.to(dtype).exp()  # W diag(s)
            # the bias first, as ActNorm adds it: folding it into the product as W'b
            # would subtract two large terms when |b| is large against x's spread
            z = channel_linear(x + norm._view(norm.bias, x).to(x.dtype), w.to(x.dtype))
        return z, norm._logdet(x) + mix._logdet(x)

    def inverse(self, z: Tensor) -> Tensor:
        inv = self.mix.inverse_matrix()  # float64; cached in eval mode
        if inv.is_inference() and not torch.is_inference_mode_enabled():
            inv = inv.clone()  # cached under inference mode: autograd may not save it
        with autocast_off(z):
            # diag(1/s) W^{-1}: row c scaled by exp(-log_scale_c)
            m = inv * torch.exp(-self.norm.log_scale.to(inv.dtype))[:, None]
            return channel_linear(z, m.to(z.dtype), -self.norm.bias.to(z.dtype))


class FlowStep(FlowSequence):
    """ActNorm → invertible 1×1 conv (a linear map on vectors) → coupling.

    Args:
        num_channels: ``C`` of ``(B, C, H, W)`` maps, or ``D`` of ``(B, D)`` vectors.
        hidden_channels: width of the coupling's conditioner.
        coupling: ``"affine"`` or ``"additive"``.
        lu: LU-parameterised channel mixing.
        dense: an MLP conditioner for vectors instead of convolutions.
        dropout: the convolutional conditioner's dropout (images).
        mlp: the MLP conditioner's options
            (see :func:`~glow_train.flows.conditioner.mlp_conditioner`).
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

    def _fold(self) -> _NormThenMix:
        """The fold of this step's current ActNorm and 1×1 conv, built on first use (and
        again if either was replaced). Kept in ``__dict__``, outside the module tree:
        no second copy of the two layers' parameters in the state dict."""
        fold = self.__dict__.get("_norm_then_mix")
        if fold is None or fold.norm is not self.flows[0] or fold.mix is not self.flows[1]:
            fold = _NormThenMix(*self.flows[:2])
            self.__dict__["_norm_then_mix"] = fold
        return fold

    def units(self) -> list[Flow]:
        """The folded ActNorm and 1×1 conv, then the coupling: the memory-saving backward
        inverts the pair as one layer."""
        return [self._fold(), self.flows[2]]

    def forward_plain(self, x: Tensor) -> tuple[Tensor, Tensor]:
        norm = self.flows[0]
        if getattr(norm, "_initializing", False) and not norm.initialized:
            return super().forward_plain(x)  # ActNorm takes its statistics from x first
        h, logdet = self._fold()(x)
        z, ld = self.flows[2](h)
        return z, logdet + ld

    def inverse(self, z: Tensor) -> Tensor:
        return self._fold().inverse(self.flows[2].inverse(z))
