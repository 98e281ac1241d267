r"""The layer protocol shared by every flow in glow-train.

A flow layer is a bijection $f$ from data towards the latent space. Its
`forward(x)` returns `(z, logdet)` with $z = f(x)$ and
$\mathrm{logdet} = \log |\det \partial f / \partial x|$ per sample, shape `(B,)`;
`inverse(z)` returns $f^{-1}(z)$. By the change of variables,
$\log p_X(x) = \log p_Z(f(x)) + \log|\det J_f(x)|$, so log-determinants
of a chain of layers add up (`FlowSequence`).

Precision: log-determinants are returned in at least float32, and the main
stream `x`/`z` keeps the dtype it came in with even under `torch.autocast`;
only the coupling conditioners (plain networks) run in reduced precision.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glow_train.flows.recompute import run_with_inversion

__all__ = [
    "Flow",
    "FlowSequence",
    "logdet_dtype",
    "positions",
    "autocast_off",
    "channel_linear",
    "split_channels",
    "deinterleave",
]


def logdet_dtype(x: Tensor) -> torch.dtype:
    """dtype for log-determinants of `x` (and the `C×C` matrices they come from):
    float64 stays float64, anything else float32."""
    return torch.promote_types(x.dtype, torch.float32)


def positions(x: Tensor) -> int:
    """Positions per channel of `x`: `H·W` of `(B, C, H, W)` maps, 1 for `(B, D)`
    vectors (a per-channel log-determinant counts once per position)."""
    return x[0, 0].numel() if x.dim() > 2 else 1


def autocast_off(x: Tensor) -> AbstractContextManager:
    """A context that disables autocast on `x`'s device type (for exact linear algebra)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def channel_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    r"""A 1×1 convolution: $y_{:, i, j} = W x_{:, i, j} + b$ at every position.

    `x` is `(B, C_in, H, W)` or `(B, C_in)`, `weight` `(C_out, C_in)`, `bias`
    `(C_out,)` or None. On `channels_last` maps (how every Glow level runs) the
    channels are the innermost dimension in memory, so the convolution is one matrix
    product on the `(B·H·W, C_in)` view, with no copy either way; its backward is
    two more matrix products. On the development machine this is 1.6× faster for
    training than oneDNN's 1×1 convolution at a Glow's shapes, which pays off in the
    invertible 1×1 convolutions and the conditioners' middle layers. Other layouts
    take `conv2d`; the result is the same.
    """
    if x.dim() == 2:
        return F.linear(x, weight, bias)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)
    return F.conv2d(x, weight.view(*weight.shape, *([1] * (x.dim() - 2))), bias)


def split_channels(x: Tensor, first: int) -> tuple[Tensor, Tensor]:
    """`(x[:, :first], x[:, first:])` as views whose gradients autograd joins in one
    concatenation.

    Basic slicing would give each view's gradient a zero-filled tensor of `x`'s full
    shape in the default layout (`slice_backward`) and then add the two: two
    allocations, two fills and an addition per split, and a gradient that no longer
    matches the `channels_last` maps around it, so the layers before it copy it
    back. `split`'s backward concatenates, keeping the gradients' layout.
    """
    a, b = x.split([first, x.shape[1] - first], dim=1)
    return a, b


def deinterleave(h: Tensor) -> tuple[Tensor, Tensor]:
    """`(h[:, 0::2], h[:, 1::2])` (even and odd channels of `(B, 2C, ...)`) as views
    whose gradients autograd interleaves back in one `stack`: channels_last for a
    channels_last `h` (see `split_channels` for what slicing costs)."""
    if h.shape[1] % 2:
        raise ValueError(f"deinterleave needs an even number of channels, got {h.shape[1]}")
    c = h.shape[1] // 2
    even, odd = h.movedim(1, -1).unflatten(-1, (c, 2)).unbind(-1)
    return even.movedim(-1, 1), odd.movedim(-1, 1)


class Flow(nn.Module):
    """Base class: `forward(x) -> (z, logdet)` and `inverse(z) -> x`."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Data to latent: `(z, logdet)`, `logdet` per item `(B,)` in at least float32."""
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Latent to data: the `x` whose `forward` is `z`."""
        raise NotImplementedError

    def inverse_for_backward(self, z: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """For the memory-saving backward: `x = f^{-1}(z)` and `f(x)` again with a graph.

        Returns `(inputs, z_again, logdet)`: `inputs` are leaf tensors that require
        grad and whose concatenation along dimension 1 is `x`; `z_again, logdet` are
        `self(x)` computed from them. Layers whose inverse and forward share work
        override it (`Coupling`).
        """
        with torch.no_grad():
            x = self.inverse(z)
        x = x.detach().requires_grad_(True)
        z_again, logdet = self(x)
        return [x], z_again, logdet


class FlowSequence(Flow):
    """Runs flows in order; the log-determinant is the sum of the layers' ones.

    With `memory_saving = True` (and gradients enabled) the backward pass
    recomputes each layer's input from its output by inversion instead of keeping
    every activation (`glow_train.flows.recompute`).
    """

    def __init__(self, flows: Iterable[Flow]):
        super().__init__()
        self.flows = nn.ModuleList(flows)
        self.memory_saving = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(z, logdet)` of the layers in order.

        With `memory_saving` (and gradients on), the backward pass recomputes each
        layer's input by inversion instead of keeping it.
        """
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
        """`x` from `z`: the layers' inverses in reverse order."""
        for flow in reversed(self.flows):
            z = flow.inverse(z)
        return z

    def units(self) -> list[Flow]:
        """The layers the memory-saving backward inverts one at a time, in forward order:
        nested sequences contribute their own units."""
        units: list[Flow] = []
        for flow in self.flows:
            units.extend(flow.units() if isinstance(flow, FlowSequence) else [flow])
        return units

    def __len__(self) -> int:
        return len(self.flows)

    def __iter__(self):
        return iter(self.flows)
