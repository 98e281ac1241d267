"""Squeeze: trade space for channels, ``(B, C, H, W) -> (B, 4C, H/2, W/2)``.

Each 2×2 block of a channel becomes 4 channels at one position (a permutation,
so ``log|det J| = 0``). Channel ``4c + 2i + j`` of the output holds pixel
``(2h + i, 2w + j)`` of input channel ``c``.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["squeeze2d", "unsqueeze2d"]


def squeeze2d(x: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, 4C, H/2, W/2)``."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)  # (B, C, H/2, 2, W/2, 2)
    x = x.permute(0, 1, 3, 5, 2, 4)  # (B, C, 2, 2, H/2, W/2)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze2d(z: Tensor) -> Tensor:
    """``(B, 4C, H, W) -> (B, C, 2H, 2W)``, the inverse of :func:`squeeze2d`."""
    b, c4, h, w = z.shape
    z = z.reshape(b, c4 // 4, 2, 2, h, w)  # (B, C, 2, 2, H, W)
    z = z.permute(0, 1, 4, 2, 5, 3)  # (B, C, H, 2, W, 2)
    return z.reshape(b, c4 // 4, 2 * h, 2 * w)
