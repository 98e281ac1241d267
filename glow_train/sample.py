"""Sampling: temperature-scaled latents decoded to image grids."""

from __future__ import annotations

import torch
from torchvision.utils import make_grid

from glow_train.likelihood import postprocess
from glow_train.model import Glow

__all__ = ["sample_images", "sample_grid"]


@torch.no_grad()
def sample_images(
    model: Glow,
    n: int,
    temperature: float,
    n_bits: int,
    seed: int = 0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """``n`` samples as floats in ``[0, 1]`` on the ``n_bits`` grid, ``(n, C, H, W)`` on CPU.

    Drawn in batches of ``batch_size`` from one generator seeded with ``seed`` on the
    model's device, so the same seed gives the same images whatever the batch size
    when run on the same device.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    device = next(model.parameters()).device
    model.eval()
    gen = torch.Generator(device).manual_seed(seed)
    batch_size = batch_size or n
    chunks = []
    for start in range(0, n, batch_size):
        x = model.sample(min(batch_size, n - start), temperature=temperature, generator=gen)
        chunks.append(postprocess(x, n_bits).cpu())
    return torch.cat(chunks)


def sample_grid(
    model: Glow,
    n: int,
    temperatures: list[float],
    n_bits: int,
    seed: int = 0,
    nrow: int = 8,
    padding: int = 2,
    batch_size: int | None = None,
) -> dict[float, torch.Tensor]:
    """One ``make_grid`` image ``(C, H', W')`` per temperature, each from the same seed."""
    return {
        float(t): make_grid(
            sample_images(model, n, float(t), n_bits, seed, batch_size), nrow=nrow, padding=padding
        )
        for t in temperatures
    }
