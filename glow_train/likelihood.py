r"""Pixel preprocessing and the bits-per-dimension objective.

Convention (that of the reference implementation, openai/glow): an 8-bit image
``x8`` in ``0..255`` is reduced to ``n_bits`` of depth, ``q = floor(x8 / 2^(8-n_bits))``
in ``0..2^n_bits - 1``, and mapped into the model's input range by

.. math::  x = q / 2^{n} - 1/2 \in [-1/2,\ 1/2 - 2^{-n}],

and dequantised by adding uniform noise of one bin's width, :math:`u \sim U[0, 2^{-n})^D`,
so the continuous input lies in :math:`[-1/2, 1/2)`. Each discrete image owns a
bin of volume :math:`2^{-nD}` in that space, hence the discrete log-likelihood is
bounded below by :math:`\log p(x + u) - D\,n \log 2` (Jensen, over ``u``).

Bits per dimension of a batch of images with ``D = C·H·W`` dimensions each:

.. math::  \mathrm{bpd} = \frac{-\log p(x + u) + D \log 2^{n}}{D \log 2}

where :math:`\log p` is the model's continuous log-density in nats
(:meth:`glow_train.Glow.log_prob`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from glow_train.errors import require_int

__all__ = ["quantize", "dequantize", "preprocess", "postprocess", "bits_per_dim"]


def _check_n_bits(n_bits: int) -> None:
    require_int("n_bits", n_bits, 1, 8)


def quantize(images: Tensor, n_bits: int) -> Tensor:
    """Map uint8 images to the model's discrete grid.

    Args:
        images: ``(B, C, H, W)`` (or any shape) integer tensor with values in ``0..255``.
        n_bits: bit depth kept, 1..8.

    Returns:
        float32 tensor of the same shape with values ``q / 2^n_bits - 0.5`` where
        ``q = floor(images / 2^(8 - n_bits))``.
    """
    _check_n_bits(n_bits)
    levels = torch.div(images.to(torch.int32), 2 ** (8 - n_bits), rounding_mode="floor")
    return levels.to(torch.float32) / 2**n_bits - 0.5


def dequantize(x: Tensor, n_bits: int, generator: torch.Generator | None = None) -> Tensor:
    """Add uniform noise of one bin's width, ``U[0, 2^-n_bits)``, to quantised input."""
    _check_n_bits(n_bits)
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + noise / 2**n_bits


def preprocess(
    images: Tensor, n_bits: int, generator: torch.Generator | None = None, noise: bool = True
) -> Tensor:
    """uint8 images -> dequantised model input in ``[-0.5, 0.5)`` (float32)."""
    x = quantize(images, n_bits)
    return dequantize(x, n_bits, generator) if noise else x


def postprocess(x: Tensor, n_bits: int) -> Tensor:
    """Model-space images -> floats in ``[0, 1]`` on the ``n_bits`` grid (for ``save_image``).

    ``x`` is clamped to ``[-0.5, 0.5)``, mapped to its bin ``q`` in ``0..2^n-1``, and
    returned as ``q / (2^n - 1)``.
    """
    _check_n_bits(n_bits)
    levels = 2**n_bits
    q = torch.floor((x.float() + 0.5) * levels).clamp_(0, levels - 1)
    return q / (levels - 1)


def bits_per_dim(log_prob: Tensor, num_dims: int, n_bits: int) -> Tensor:
    r"""Bits per dimension of dequantised discrete data.

    .. math::  \mathrm{bpd} = \frac{-\log p(x) + D \log 2^{n}}{D \log 2}

    Args:
        log_prob: continuous log-density in nats, any shape (e.g. ``(B,)`` per image).
        num_dims: ``D``, the number of dimensions of one image (``C·H·W``).
        n_bits: bit depth of the data the density was evaluated on.

    Returns:
        Tensor of the shape of ``log_prob`` (computed in at least float32).
    """
    _check_n_bits(n_bits)
    log_prob = log_prob.to(torch.promote_types(log_prob.dtype, torch.float32))
    return (-log_prob + num_dims * n_bits * math.log(2.0)) / (num_dims * math.log(2.0))
