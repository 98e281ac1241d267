"""Squeeze: trade space for channels, `(B, C, H, W) -> (B, 4C, H/2, W/2)`.

Each 2×2 block of a channel becomes 4 channels at one position (a permutation,
so `log|det J| = 0`). Channel `4c + 2i + j` of the output holds pixel
`(2h + i, 2w + j)` of input channel `c`.

Both directions return `channels_last` tensors (NHWC in memory; the logical
shape is unchanged), the layout in which every Glow level runs: oneDNN's and
cuDNN's convolutions are faster in it (on the 2-core development machine, a
CIFAR-shaped training step by about a quarter). The one copy each reshape needs
writes that layout directly.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["squeeze2d", "unsqueeze2d"]


def squeeze2d(x: Tensor) -> Tensor:
    """`(B, C, H, W) -> (B, 4C, H/2, W/2)`, channels_last."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)  # (B, C, H/2, i, W/2, j)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/2, W/2, C, i, j)
    x = x.reshape(b, h // 2, w // 2, 4 * c)  # (B, H/2, W/2, 4C): the one copy, NHWC
    return x.permute(0, 3, 1, 2)  # (B, 4C, H/2, W/2) as a channels_last view


def unsqueeze2d(z: Tensor) -> Tensor:
    """`(B, 4C, H, W) -> (B, C, 2H, 2W)`, channels_last; the inverse of `squeeze2d`."""
    b, c4, h, w = z.shape
    z = z.permute(0, 2, 3, 1).reshape(b, h, w, c4 // 4, 2, 2)  # (B, H, W, C, i, j)
    z = z.permute(0, 1, 4, 2, 5, 3)  # (B, H, i, W, j, C)
    z = z.reshape(b, 2 * h, 2 * w, c4 // 4)  # (B, 2H, 2W, C): the one copy, NHWC
    return z.permute(0, 3, 1, 2)  # (B, C, 2H, 2W) as a channels_last view
