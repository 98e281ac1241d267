"""Test bits/dim: one function shared by the trainer and ``glow-eval``.

The test split is cut into fixed batches ``[0, b), [b, 2b), …``; batch ``i`` of
draw ``d`` is dequantised with noise from a generator seeded by
``(seed, d, i)``. Because the batches and their noise do not depend on the
number of processes, a sharded evaluation (batches dealt round-robin to ranks,
results summed) gives the same number as a single-process one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from glow_train.data import make_loader
from glow_train.distributed import DistInfo, all_reduce_sum, shard_batches
from glow_train.likelihood import bits_per_dim, preprocess
from glow_train.model import Glow

__all__ = ["EvalResult", "evaluate_bpd", "batch_seed"]


@dataclass
class EvalResult:
    """Mean bits/dim over the images, its standard error over draws (None for one draw),
    and each image's bits/dim (averaged over draws) with its label."""

    bpd: float
    stderr: float | None
    num_images: int
    draws: int
    per_image: torch.Tensor
    labels: torch.Tensor


def batch_seed(seed: int, draw: int, batch_index: int) -> int:
    return (seed * 1_000_003 + draw * 104_729 + batch_index * 31 + 7) % (2**63 - 1)


@torch.no_grad()
def evaluate_bpd(
    model: Glow,
    dataset: Dataset,
    *,
    n_bits: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    draws: int = 1,
    dist: DistInfo | None = None,
    autocast: Callable = nullcontext,
    num_workers: int = 0,
    progress: bool = False,
) -> EvalResult:
    """Bits/dim of ``model`` on every image of ``dataset`` (uint8 images, labels).

    Args:
        model: the (unwrapped) Glow; it is put in eval mode.
        n_bits: bit depth of the data (see :func:`glow_train.likelihood.bits_per_dim`).
        seed: dequantisation seed; the same seed gives the same number.
        draws: noise draws per image; the standard error of the mean over draws is
            reported when ``draws > 1``.
        dist: shard the batches over the ranks of a process group and sum the results.
    """
    device = torch.device(device)
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    n = len(dataset)
    batches = shard_batches(n, batch_size, rank, world)
    first_batch = rank
    loader = make_loader(
        dataset, batch_size, batch_sampler=batches, num_workers=num_workers, device=device.type
    )
    model.eval()
    per_draw = torch.zeros(draws, n, dtype=torch.float64, device=device)
    labels = torch.zeros(n, dtype=torch.int64, device=device)
    bar = tqdm(total=len(batches) * draws, disable=not progress, unit="batch", desc="eval")
    for j, (images, y) in enumerate(loader):
        index = torch.tensor(batches[j], device=device)
        images = images.to(device, non_blocking=True)
        labels[index] = torch.as_tensor(y, device=device).long()
        batch_index = first_batch + j * world
        for d in range(draws):
            gen = torch.Generator(device).manual_seed(batch_seed(seed, d, batch_index))
            x = preprocess(images, n_bits, gen)
            with autocast():
                log_prob = model.log_prob(x)
            per_draw[d, index] = bits_per_dim(log_prob, model.num_dims, n_bits).double()
            bar.update(1)
    bar.close()
    all_reduce_sum(per_draw)
    all_reduce_sum(labels)
    draw_means = per_draw.mean(dim=1)
    stderr = None
    if draws > 1:
        stderr = (draw_means.std(unbiased=True) / math.sqrt(draws)).item()
    return EvalResult(
        bpd=draw_means.mean().item(),
        stderr=stderr,
        num_images=n,
        draws=draws,
        per_image=per_draw.mean(dim=0).cpu(),
        labels=labels.cpu(),
    )
