r"""Fused CPU kernels for the conditioners' hidden layers: convolution + bias + ReLU.

On the CPU the conditioners' first two layers,
:math:`h = \mathrm{relu}(W * x + b)`, each cost a convolution (or matrix product)
plus passes over the whole hidden activation for the bias and the ReLU; at a Glow's
shapes those passes are memory-bound and took about a tenth of a training step and a
quarter of bfloat16 sampling. oneDNN (PyTorch's ``mkldnn`` backend) applies bias and
ReLU inside the convolution's or matrix product's own output loop:
``torch.ops.mkldnn._convolution_pointwise`` and ``_linear_pointwise``, the kernels
``torch.compile`` itself emits for these patterns on the CPU.

:func:`conv3x3_relu` and :func:`linear_relu` compute exactly
``relu(conv2d(x, w, b, padding=1))`` and ``relu(linear(x, w, b))`` (bitwise the same
output as the unfused ops on the development machine) with that kernel in the forward
pass and a hand-written backward pass (``threshold_backward``, then the convolution's
or product's own gradients). Where the kernel is not there (another device, a build
without oneDNN, float64, under ``torch.compile``) they run the unfused ops, which is
also what the tests compare the backward against in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["conv3x3_relu", "linear_relu", "fused_available"]

_STRIDE, _PADDING, _DILATION = [1, 1], [1, 1], [1, 1]


#: whether this build of PyTorch has the oneDNN kernels (checked once, at import)
ONEDNN_KERNELS = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)


def fused_available(x: Tensor) -> bool:
    """Whether the oneDNN kernels serve ``x``: a CPU float32/bfloat16 tensor, eager mode."""
    return (
        not torch.compiler.is_compiling()
        and ONEDNN_KERNELS
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
    )


def _conv_relu_forward(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    if fused_available(x):
        return torch.ops.mkldnn._convolution_pointwise(
            x, w, b, _PADDING, _STRIDE, _DILATION, 1, "relu", [], ""
        )
    return F.relu(F.conv2d(x, w, b, padding=1))


def _linear_relu_forward(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    if fused_available(x):
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")
    return F.relu(F.linear(x, w, b))


class _ConvReLU(torch.autograd.Function):
    """``relu(conv2d(x, w, b, padding=1))`` for a 3×3 ``w``; see the module docstring."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        y = _conv_relu_forward(x, w, b)
        ctx.save_for_backward(x, w, y)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w, y = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(g.contiguous(memory_format=_layout(y)), y, 0)
        mask = list(ctx.needs_input_grad)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            g, x, w, [w.shape[0]], _STRIDE, _PADDING, _DILATION, False, [0, 0], 1, mask
        )
        return gx, gw, gb


class _LinearReLU(torch.autograd.Function):
    """``relu(x @ w.T + b)`` on ``(N, C_in)`` rows; see the module docstring."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        y = _linear_relu_forward(x, w, b)
        ctx.save_for_backward(x, w, y)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w, y = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(g.contiguous(), y, 0)
        gx = g @ w if ctx.needs_input_grad[0] else None
        gw = g.t() @ x if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _layout(y: Tensor) -> torch.memory_format:
    if y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def conv3x3_relu(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """:math:`\\mathrm{relu}(W * x + b)`, 3×3 kernel, padding 1: ``(B, C_in, H, W)`` →
    ``(B, C_out, H, W)`` in ``x``'s memory layout. All three in one dtype."""
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or b.requires_grad):
        return _ConvReLU.apply(x, w, b)
    return _conv_relu_forward(x, w, b)


def linear_relu(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """:math:`\\mathrm{relu}(W x + b)` per position of a channels_last map, or per row of
    ``(N, C_in)``: the 1×1 convolution of :func:`~glow_train.flows.base.channel_linear`
    with its bias and ReLU fused. All three in one dtype."""
    if x.dim() == 4:
        if not x.is_contiguous(memory_format=torch.channels_last):
            return F.relu(F.conv2d(x, w[:, :, None, None], b))
        rows = linear_relu(x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), w, b)
        return rows.view(x.shape[0], x.shape[2], x.shape[3], -1).permute(0, 3, 1, 2)
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or b.requires_grad):
        return _LinearReLU.apply(x, w, b)
    return _linear_relu_forward(x, w, b)
