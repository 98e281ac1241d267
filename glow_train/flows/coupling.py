r"""Affine and additive coupling layers (Dinh et al. 2017; Kingma & Dhariwal 2018, 3.3).

The input is split along dimension 1 into ``x_a`` (the first ``C//2`` channels,
passed through unchanged) and ``x_b`` (the rest). A conditioner network
``NN(x_a)`` yields a shift ``t`` (and, for the affine kind, a raw scale ``h``):

- affine: :math:`z_b = (x_b + t)\,\sigma(h + 2)`,
  :math:`\log|\det J| = \sum \log \sigma(h + 2)`. The sigmoid (the reference
  implementation's choice) keeps the scale in ``(0, 1)``: it cannot blow up the way
  ``exp(h)`` can, which is what makes affine Glow train without NaNs; the ``+2``
  starts it near ``0.88``.
- additive: :math:`z_b = x_b + t`, :math:`\log|\det J| = 0`.

The conditioner's last layer is zero-initialised, so every coupling starts as the
identity (affine: up to the constant scale :math:`\sigma(2)`).
Conditioners run under autocast if it is on; their output is cast back to the
stream's dtype before it touches ``x_b``, and the log-determinant is summed in
at least float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glow_train.flows.base import Flow, channel_linear, logdet_dtype

__all__ = [
    "Coupling",
    "PointwiseConv2d",
    "ReLU",
    "ZeroInit",
    "Dropout",
    "dropout",
    "conv_conditioner",
    "mlp_conditioner",
    "ACTIVATIONS",
    "COUPLINGS",
]

COUPLINGS = ("affine", "additive")


class ZeroInit(nn.Module):
    """Wraps a conv or linear layer, zeroes it and adds a learned output scale.

    ``y = layer(x) * exp(3 * log_scale)`` per output channel, with everything
    starting at zero (the reference implementation's ``Conv2dZeros``): the layer
    outputs zeros at initialisation and can grow its output quickly once trained.
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear, log_scale_factor: float = 3.0):
        super().__init__()
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
        self.layer = layer
        self.log_scale_factor = log_scale_factor
        out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        self.log_scale = nn.Parameter(torch.zeros(out))

    def forward(self, x: Tensor) -> Tensor:
        y = self.layer(x)
        scale = torch.exp(self.log_scale * self.log_scale_factor)
        return y * scale.view(1, -1, *([1] * (y.dim() - 2))).to(y.dtype)


DROPOUT_LEVELS = 2**16  # dropout's probability is rounded to a multiple of 1/65,536


def dropout(x: Tensor, p: float) -> Tensor:
    r"""Inverted dropout: each element zeroed with probability ``p'``, the rest scaled by
    :math:`1/(1-p')`, where :math:`p' = \mathrm{round}(65536\,p)/65536` (within
    :math:`8\cdot 10^{-6}` of ``p``), so :math:`E[\mathrm{dropout}(x)] = x` exactly.

    The mask comes from 16-bit slices of 64-bit random words, one word per four
    elements, all from the global generator (seeded per step by the trainer). On the
    CPU that is 4× fewer draws than ``F.dropout``'s Bernoulli sampling, which spent a
    fifth of a digits training step generating masks; on CUDA both are cheap.
    """
    if p <= 0.0:
        return x
    if torch.compiler.is_compiling():  # the compiler generates its own fused mask
        return F.dropout(x, p, training=True)
    dropped = round(p * DROPOUT_LEVELS)
    if dropped >= DROPOUT_LEVELS:
        return torch.zeros_like(x)
    n = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=x.device)
    # int16 slices are uniform on [-32768, 32767]: keep the top 65536 - dropped values
    keep = words.view(torch.int16)[:n].view(x.shape) >= dropped - DROPOUT_LEVELS // 2
    scale = DROPOUT_LEVELS / (DROPOUT_LEVELS - dropped)
    return x * keep.to(x.dtype).mul_(scale)


class Dropout(nn.Module):
    """:func:`dropout` in training mode (``nn.Dropout``'s behaviour, with the faster mask)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p) if self.training else x


class ReLU(nn.Module):
    """``nn.ReLU`` (then dropout of probability ``dropout`` in training mode) that works
    in place wherever autograd allows it cheaply.

    In place saves a whole hidden activation's allocation and write (on the 2-core
    machine a fresh ReLU output cost 5× the in-place one). The exception is a view
    that needs a gradient (the output of :class:`PointwiseConv2d`): autograd would
    have to copy its base for an in-place change, so it gets a new tensor.
    """

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = float(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_compiling():  # the compiler fuses it; no in-place needed
            y = F.relu(x)
        else:
            needs_copy = x._is_view() and x.requires_grad and torch.is_grad_enabled()
            y = F.relu(x, inplace=not needs_copy)
        if self.dropout > 0 and self.training:
            y = dropout(y, self.dropout)
        return y


class PointwiseConv2d(nn.Conv2d):
    """A 1×1 ``nn.Conv2d`` (same parameters and state dict) computed by
    :func:`~glow_train.flows.base.channel_linear`: a matrix product on channels_last maps."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return channel_linear(x, self.weight.flatten(1), self.bias)


def conv_conditioner(
    in_channels: int, hidden_channels: int, out_channels: int, dropout: float = 0.0
) -> nn.Module:
    """conv3×3 → ReLU → conv1×1 → ReLU → zero-initialised conv3×3 (shape-preserving);
    ``dropout`` after each ReLU in training mode (the state dict is the same)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
        ReLU(dropout),
        PointwiseConv2d(hidden_channels, hidden_channels),
        ReLU(dropout),
        ZeroInit(nn.Conv2d(hidden_channels, out_channels, 3, padding=1)),
    )


#: ``model.activation`` of the MLP conditioners
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


def mlp_conditioner(
    in_features: int,
    hidden_features: int,
    out_features: int,
    hidden_layers: int = 2,
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    """``hidden_layers`` × (Linear → activation [→ Dropout]) → zero-initialised Linear,
    for ``(B, D)`` input. The defaults give the layers (and state-dict keys) of the
    original two-layer ReLU MLP."""
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}"
        )
    if hidden_layers < 1:
        raise ValueError(f"hidden_layers must be at least 1, got {hidden_layers}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden_features), ACTIVATIONS[activation]()]
        if dropout > 0:
            layers.append(Dropout(dropout))
        width = hidden_features
    return nn.Sequential(*layers, ZeroInit(nn.Linear(width, out_features)))


class Coupling(Flow):
    """Affine or additive coupling over dimension 1 of ``(B, C, H, W)`` or ``(B, D)``.

    Args:
        num_channels: ``C`` (at least 2).
        hidden_channels: width of the conditioner.
        kind: ``"affine"`` or ``"additive"`` (``model.coupling``).
        dense: use an MLP conditioner (vectors) instead of convolutions (images).
        mlp: options of :func:`mlp_conditioner` (``hidden_layers``, ``activation``,
            ``dropout``), for ``dense`` only.
        dropout: for the convolutional conditioner, dropout after its hidden layers.
    """

    def __init__(
        self,
        num_channels: int,
        hidden_channels: int,
        kind: str,
        dense: bool = False,
        mlp: dict | None = None,
        dropout: float = 0.0,
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
            self.net = conv_conditioner(self.split, hidden_channels, out, dropout)

    def _shift_and_log_scale(self, x_a: Tensor) -> tuple[Tensor, Tensor | None]:
        h = self.net(x_a).to(x_a.dtype)
        if self.kind == "additive":
            return h, None
        # Interleaved channels, as in the reference: even -> shift, odd -> raw scale.
        shift, raw = h[:, 0::2], h[:, 1::2]
        return shift, F.logsigmoid(raw.to(logdet_dtype(x_a)) + 2.0)

    def _transform(self, x_b: Tensor, shift: Tensor, log_scale: Tensor | None):
        """``z_b`` and the log-determinant from ``x_b`` and the conditioner's output."""
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
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        z_b, logdet = self._transform(x_b, *self._shift_and_log_scale(x_a))
        return torch.cat([x_a, z_b], dim=1), logdet

    def inverse(self, z: Tensor) -> Tensor:
        z_a, z_b = z[:, : self.split], z[:, self.split :]
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
