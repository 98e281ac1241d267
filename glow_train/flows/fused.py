r"""Fused CPU inference kernels for the conditioners' hidden layers: conv + bias + ReLU.

In sampling on the CPU, the conditioners' first two layers,
$h = \mathrm{relu}(W * x + b)$, cost much in the passes over the whole hidden
activation for the bias and the ReLU (in bfloat16 the matrix arithmetic itself is
cheap: AMX tiles; in float32 `addmm` first copies the broadcast bias into its
whole output). oneDNN (PyTorch's `mkldnn` backend) applies both inside the convolution's or
matrix product's own output loop: `torch.ops.mkldnn._convolution_pointwise` and
`_linear_pointwise`, the kernels `torch.compile` itself emits for these patterns
on the CPU. `conv3x3_relu` and `linear_relu` compute exactly
`relu(conv2d(x, w, b, padding=1))` and `relu(linear(x, w, b))` with them, and
with the unfused ops wherever they are missing (another device, a build without
oneDNN, float64, bfloat16 on a CPU without native bfloat16, under `torch.compile`).

They are forward-only (no autograd) and serve inference only: sampling, validation
and `glow-eval`. Training keeps the plain layers, which autograd needs anyway.

The bfloat16 kernels need a CPU that computes bfloat16 natively (AVX-512 BW/VL/DQ,
AVX-NE-CONVERT or AMX on x86; oneDNN refuses them elsewhere with a `RuntimeError`).
`CPU_NATIVE_BF16` says whether this CPU does, asked once at import with the
check PyTorch's own compiler uses (`torch.ops.mkldnn._is_mkldnn_bf16_supported`);
without it, bfloat16 runs through the plain layers, and `precision=auto`
(`glow_train.runtime.precision`) chooses float32 there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "conv3x3_relu",
    "linear_relu",
    "fused_available",
    "ONEDNN_KERNELS",
    "CPU_NATIVE_BF16",
]

#: whether this build of PyTorch has the oneDNN kernels (checked once, at import)
ONEDNN_KERNELS = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)

#: whether this CPU computes bfloat16 natively in oneDNN (checked once, at import):
#: the fused bfloat16 kernels and `precision=auto -> bf16` on the CPU depend on it
CPU_NATIVE_BF16 = bool(
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported")
    and torch.ops.mkldnn._is_mkldnn_bf16_supported()
)


def fused_available(x: Tensor, dtype: torch.dtype | None = None) -> bool:
    """Whether the oneDNN kernels serve `x` computed in `dtype` (`None`: `x`'s own):
    a CPU tensor in eager mode, in float32, or in bfloat16 on a CPU with
    `CPU_NATIVE_BF16`."""
    dtype = x.dtype if dtype is None else dtype
    return (
        not torch.compiler.is_compiling()
        and ONEDNN_KERNELS
        and torch.backends.mkldnn.enabled  # torch.backends.mkldnn.flags(enabled=False)
        and x.device.type == "cpu"
        and (dtype == torch.float32 or (dtype == torch.bfloat16 and CPU_NATIVE_BF16))
    )


def conv3x3_relu(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    r"""$\mathrm{relu}(W * x + b)$, 3×3 kernel, padding 1: `(B, C_in, H, W)` →
    `(B, C_out, H, W)` in `x`'s memory layout. All three in one dtype; no autograd."""
    if fused_available(x):
        return torch.ops.mkldnn._convolution_pointwise(
            x, w, b, [1, 1], [1, 1], [1, 1], 1, "relu", [], ""
        )
    return F.relu(F.conv2d(x, w, b, padding=1))


def linear_relu(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    r"""$\mathrm{relu}(W x + b)$ per position of a channels_last map, or per row of
    `(N, C_in)`: a 1×1 convolution with its bias and ReLU. All three in one dtype; no
    autograd."""
    if x.dim() == 4:
        if not x.is_contiguous(memory_format=torch.channels_last):
            return F.relu(F.conv2d(x, w[:, :, None, None], b))
        rows = linear_relu(x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]), w, b)
        return rows.view(x.shape[0], x.shape[2], x.shape[3], -1).permute(0, 3, 1, 2)
    if fused_available(x):
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")
    return F.relu(F.linear(x, w, b))
