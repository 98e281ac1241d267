r"""Affine and additive coupling layers (Dinh et al. 2017; Kingma & Dhariwal 2018, 3.3).

The input is split along dimension 1 into `x_a` (the first `C//2` channels,
passed through unchanged) and `x_b` (the rest). A conditioner network
`NN(x_a)` yields a shift `t` (and, for the affine kind, a raw scale `h`):

- affine: $z_b = (x_b + t)\,\sigma(h + 2)$,
  $\log|\det J| = \sum \log \sigma(h + 2)$. The sigmoid (the reference
  implementation's choice) keeps the scale in `(0, 1)`: it cannot blow up the way
  `exp(h)` can, which is what makes affine Glow train without NaNs; the `+2`
  starts it near `0.88`.
- additive: $z_b = x_b + t$, $\log|\det J| = 0$.

The conditioners (`glow_train.flows.conditioner`) end in a zero-initialised
layer, so every coupling starts as the identity (affine: up to the constant scale
$\sigma(2)$).
Conditioners run under autocast if it is on; their output is cast back to the
stream's dtype before it touches `x_b`, and the log-determinant is summed in
at least float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from glow_train.flows.base import Flow, deinterleave, logdet_dtype, split_channels
from glow_train.flows.conditioner import mlp_conditioner
from glow_train.flows.conv_attention import image_conditioner

__all__ = ["Coupling", "COUPLINGS"]

COUPLINGS = ("affine", "additive")


class Coupling(Flow):
    """Affine or additive coupling over dimension 1 of `(B, C, H, W)` or `(B, D)`.

    Args:
        num_channels: `C` (at least 2).
        hidden_channels: width of the conditioner.
        kind: `"affine"` or `"additive"` (`model.coupling`).
        dense: use an MLP conditioner (vectors) instead of convolutions (images).
        mlp: options of `mlp_conditioner` (`hidden_layers`, `activation`,
            `dropout`), for `dense` only.
        dropout: for the convolutional conditioner, dropout after its hidden layers.
        conditioner: for images, `kind`, `blocks` and `heads` of `image_conditioner`
            (`model.conditioner`; the default is the Glow paper's three layers).
    """

    #: `train.compile` compiles each coupling alone (`glow_train.training.compiling`)
    compile_region = True

    def __init__(
        self,
        num_channels: int,
        hidden_channels: int,
        kind: str,
        dense: bool = False,
        mlp: dict | None = None,
        dropout: float = 0.0,
        conditioner: dict | None = None,
    ):
        super().__init__()
        if kind not in COUPLINGS:
            raise ValueError(f"unknown coupling {kind!r}; choose one of {', '.join(COUPLINGS)}")
        if num_channels < 2:
            raise ValueError(f"coupling needs at least 2 channels, got {num_channels}")
        self.kind = kind
        self.split = num_channels // 2
        changed = num_channels - self.split
        out = 2 * changed if kind == "affine" else changed
        if dense:
            self.net = mlp_conditioner(self.split, hidden_channels, out, **(mlp or {}))
        else:
            if mlp:
                raise ValueError("conditioner options are for dense (MLP) couplings")
            self.net = image_conditioner(
                self.split, hidden_channels, out, dropout, **(conditioner or {})
            )

    def _shift_and_log_scale(self, x_a: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.net(x_a).to(x_a.dtype)
        if self.kind == "additive":
            return h, None
        # Interleaved channels, as in the reference: even -> shift, odd -> raw scale.
        shift, raw = deinterleave(h)
        return shift, F.logsigmoid(raw.to(logdet_dtype(x_a)) + 2.0)

    def _transform(self, x_b: Tensor, shift: Tensor, log_scale: Tensor | None):
        """`z_b` and the log-determinant from `x_b` and the conditioner's output."""
        z_b = x_b + shift
        if log_scale is None:
            return z_b, x_b.new_zeros(x_b.shape[0], dtype=logdet_dtype(x_b))
        z_b = z_b * log_scale.exp().to(x_b.dtype)
        return z_b, log_scale.sum(dim=tuple(range(1, log_scale.dim())))

    @staticmethod
    def _untransform(z_b: Tensor, shift: Tensor, log_scale: Tensor | None) -> Tensor:
        if log_scale is not None:
            z_b = z_b * torch.exp(-log_scale).to(z_b.dtype)
        return z_b - shift

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(z, logdet)`: the second half shifted (and scaled) by the conditioner of the first."""
        x_a, x_b = split_channels(x, self.split)
        z_b, logdet = self._transform(x_b, *self._shift_and_log_scale(x_a))
        return torch.cat([x_a, z_b], dim=1), logdet

    def inverse(self, z: Tensor) -> Tensor:
        """`x` from `z`: the same conditioner of the unchanged first half, inverted."""
        z_a, z_b = split_channels(z, self.split)
        return torch.cat([z_a, self._untransform(z_b, *self._shift_and_log_scale(z_a))], dim=1)

    def inverse_for_backward(self, z: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """One conditioner pass serves the inverse and the recomputed forward."""
        x_a = z[:, : self.split].detach().requires_grad_(True)
        shift, log_scale = self._shift_and_log_scale(x_a)  # with a graph, from x_a
        with torch.no_grad():
            x_b = self._untransform(z[:, self.split :], shift, log_scale)
        x_b = x_b.requires_grad_(True)
        z_b, logdet = self._transform(x_b, shift, log_scale)
        return [x_a, x_b], torch.cat([x_a, z_b], dim=1), logdet
