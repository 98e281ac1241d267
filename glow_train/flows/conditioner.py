r"""The coupling layers' conditioner networks.

- `conv_conditioner` (images): conv3×3 → ReLU → conv1×1 → ReLU → zero-initialised
  conv3×3, as `ConvConditioner`; in inference on the CPU (eval mode without
  gradients: sampling, validation, `glow-eval`; float32 or bfloat16) its hidden
  layers run as fused convolution + bias + ReLU kernels (`glow_train.flows.fused`).
  The state dict is that of the plain `nn.Sequential` of the same layers.
- `mlp_conditioner` (vectors): Linear → activation [→ dropout] layers and a
  zero-initialised Linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glow_train.flows.base import channel_linear
from glow_train.flows.fused import conv3x3_relu, fused_available, linear_relu

__all__ = [
    "ConvConditioner",
    "cast_together",
    "PointwiseConv2d",
    "ReLU",
    "ZeroInit",
    "Dropout",
    "dropout",
    "conv_conditioner",
    "mlp_conditioner",
    "ACTIVATIONS",
]


class ZeroInit(nn.Module):
    """Wraps a conv or linear layer, zeroes it and adds a learned output scale.

    `y = layer(x) * exp(3 * log_scale)` per output channel, with everything
    starting at zero (the reference implementation's `Conv2dZeros`): the layer
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

    def scale(self) -> Tensor:
        """The per-channel output scale `exp(3 * log_scale)`, shape `(C_out,)`."""
        return torch.exp(self.log_scale * self.log_scale_factor)

    def forward(self, x: Tensor) -> Tensor:
        """The wrapped layer's output times its learned per-channel scale (zero at the start)."""
        y = self.layer(x)
        return y * self.scale().view(1, -1, *([1] * (y.dim() - 2))).to(y.dtype)


DROPOUT_LEVELS = 2**16  # dropout's probability is rounded to a multiple of 1/65,536


def dropout(x: Tensor, p: float) -> Tensor:
    r"""Inverted dropout: each element zeroed with probability `p'`, the rest scaled by
    $1/(1-p')$, where $p' = \mathrm{round}(65536\,p)/65536$ (within
    $8\cdot 10^{-6}$ of `p`), so $E[\mathrm{dropout}(x)] = x$ exactly.

    The mask comes from 16-bit slices of 64-bit random words, one word per four
    elements, all from the global generator (seeded per step by the trainer). On the
    CPU that is 4× fewer draws than `F.dropout`'s Bernoulli sampling, which spent a
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
    """`dropout` in training mode (`nn.Dropout`'s behaviour, with the faster mask)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        """`x` with dropout in training mode, unchanged in evaluation mode."""
        return dropout(x, self.p) if self.training else x


class ReLU(nn.Module):
    """`nn.ReLU` (then dropout of probability `dropout` in training mode) that works
    in place wherever autograd allows it cheaply.

    In place saves a whole hidden activation's allocation and write (on the 2-core
    machine a fresh ReLU output cost 5× the in-place one). The exception is a view
    that needs a gradient (the output of `PointwiseConv2d`): autograd would
    have to copy its base for an in-place change, so it gets a new tensor.
    """

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = float(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """ReLU, in place where autograd allows, then dropout in training mode."""
        if torch.compiler.is_compiling():  # the compiler fuses it; no in-place needed
            y = F.relu(x)
        else:
            needs_copy = x._is_view() and x.requires_grad and torch.is_grad_enabled()
            y = F.relu(x, inplace=not needs_copy)
        if self.dropout > 0 and self.training:
            y = dropout(y, self.dropout)
        return y


class PointwiseConv2d(nn.Conv2d):
    """A 1×1 `nn.Conv2d` (same parameters and state dict) computed by
    `channel_linear`: a matrix product on channels_last maps."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """The 1×1 convolution of `x` (`channel_linear`)."""
        return channel_linear(x, self.weight.flatten(1), self.bias)


class ConvConditioner(nn.Sequential):
    """conv3×3 → `ReLU` → `PointwiseConv2d` → `ReLU` → `ZeroInit` conv3×3,
    shape-preserving over `(B, C, H, W)` maps.

    The layers (and so the state dict) are those of the plain `nn.Sequential`. In
    inference on the CPU (eval mode, no gradient; float32, or autocast to bfloat16 as
    in `glow-sample precision=bf16`) `forward` computes the same function with
    convolution + bias + ReLU in one kernel per hidden layer (`glow_train.flows.fused`)
    and the output layer's scale `exp(3 * log_scale)` folded into its weights
    and bias. Elsewhere under autocast (training on a GPU or CPU in bf16 or fp16) the
    layers run one by one in the autocast dtype, their weights cast together once
    (`_cast_once`); without autocast (float32, float64) they run as they are.
    """

    def forward(self, x: Tensor) -> Tensor:
        """The conditioner's output (in evaluation mode, in the CPU's fast precision if any)."""
        dtype = self._inference_dtype(x)
        if dtype is None:
            low = _autocast_dtype(x)
            return super().forward(x) if low is None else self._cast_once(x, low)
        conv_in, _, pointwise, _, out = self  # eval mode: the ReLUs drop nothing
        scale = out.scale()
        with torch.autocast(x.device.type, enabled=False):
            h = conv3x3_relu(x.to(dtype), conv_in.weight.to(dtype), conv_in.bias.to(dtype))
            h = linear_relu(h, pointwise.weight.flatten(1).to(dtype), pointwise.bias.to(dtype))
            w_out = (out.layer.weight * scale.view(-1, 1, 1, 1)).to(dtype)
            return F.conv2d(h, w_out, (out.layer.bias * scale).to(dtype), padding=1)

    def _cast_once(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """The layers under autocast to `dtype`, with the float32 / `dtype` boundary
        crossed once per conditioner: its weights, biases and output scale are cast
        as one concatenated tensor (`cast_together`), the input once, and the layers
        run with autocast off. Autocast itself would cast each weight and bias at each
        use, forward and backward: two thirds of a bf16 step's extra kernels."""
        conv_in, relu_in, pointwise, relu_mid, out = self
        with torch.autocast(x.device.type, enabled=False):
            w_in, b_in, w_mid, b_mid, w_out, b_out, scale = cast_together(
                [
                    conv_in.weight,
                    conv_in.bias,
                    pointwise.weight.flatten(1),
                    pointwise.bias,
                    out.layer.weight,
                    out.layer.bias,
                    out.scale(),
                ],
                dtype,
            )
            h = relu_in(F.conv2d(x.to(dtype), w_in, b_in, conv_in.stride, conv_in.padding))
            h = relu_mid(channel_linear(h, w_mid, b_mid))
            y = F.conv2d(h, w_out, b_out, out.layer.stride, out.layer.padding)
            return y * scale.view(1, -1, 1, 1)

    def _inference_dtype(self, x: Tensor) -> torch.dtype | None:
        """The dtype the fused kernels run in, or None where the plain layers run."""
        if self.training or torch.is_grad_enabled() or x.dim() != 4:
            return None  # dropout, gradients: the layers as they are
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            dtype = torch.float32 if x.dtype == torch.float32 else None
        else:
            bf16 = torch.get_autocast_dtype(device) == torch.bfloat16
            dtype = torch.bfloat16 if bf16 and x.dtype in (torch.float32, torch.bfloat16) else None
        # bfloat16 on a CPU without native bfloat16: the layers, under autocast
        return dtype if dtype is not None and fused_available(x, dtype) else None


def cast_together(tensors: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """`[t.to(dtype) for t in tensors]` in one cast: the tensors are concatenated, cast
    and split into views of the result with the same shapes and strides (a
    channels_last weight stays channels_last), all without a copy of its own.
    Gradients flow back through one cast as well. Each tensor must be dense
    (non-overlapping, without gaps), as parameters are."""
    flat, orders = [], []
    for t in tensors:
        order = sorted(range(t.dim()), key=lambda d: -t.stride(d))  # outermost first
        orders.append(order)
        flat.append(t.permute(order).reshape(-1))  # a view for a dense tensor
    parts = torch.cat(flat).to(dtype).split([t.numel() for t in tensors])
    return [
        part.view([t.shape[d] for d in order]).permute(_inverse(order))
        for part, t, order in zip(parts, tensors, orders, strict=True)
    ]


def _inverse(order: list[int]) -> list[int]:
    inverse = [0] * len(order)
    for position, d in enumerate(order):
        inverse[d] = position
    return inverse


def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype autocast runs a convolution of `x` in (float32 `x` under autocast on its
    device), or `None` where it would not cast."""
    device = x.device.type
    if x.dtype != torch.float32 or not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def conv_conditioner(
    in_channels: int, hidden_channels: int, out_channels: int, dropout: float = 0.0
) -> ConvConditioner:
    """conv3×3 → ReLU → conv1×1 → ReLU → zero-initialised conv3×3 (shape-preserving);
    `dropout` after each ReLU in training mode (the state dict is the same)."""
    return ConvConditioner(
        nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
        ReLU(dropout),
        PointwiseConv2d(hidden_channels, hidden_channels),
        ReLU(dropout),
        ZeroInit(nn.Conv2d(hidden_channels, out_channels, 3, padding=1)),
    )


#: `model.activation` of the MLP conditioners
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
    """`hidden_layers` × (Linear → activation [→ Dropout]) → zero-initialised Linear,
    for `(B, D)` input. The defaults give the layers (and state-dict keys) of the
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
