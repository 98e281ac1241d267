"""Process layout for single-process and torchrun (DistributedDataParallel) runs.

torchrun sets `RANK`, `WORLD_SIZE` and `LOCAL_RANK`; when they are present the
process group is initialised (`nccl` on CUDA, `gloo` on CPU) and each rank is
pinned to its local GPU. Everything else in the trainer asks this module who it is
and uses `all_reduce_sum` / `broadcast_object` for the few values that
must agree across ranks.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from glow_train.errors import ConfigError
from glow_train.runtime.cluster import export_torch_env

__all__ = [
    "DistInfo",
    "setup_distributed",
    "cleanup_distributed",
    "resolve_device",
    "all_reduce_sum",
    "process_count",
    "all_reduce_max",
    "broadcast_object",
    "EpochSampler",
    "shard_batches",
    "wrap_ddp",
]


@dataclass(frozen=True)
class DistInfo:
    """Who this process is. `world_size == 1` for a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the process that logs and writes)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process runs."""
        return self.world_size > 1


def resolve_device(spec: str | torch.device, local_rank: int = 0) -> torch.device:
    """`auto|cpu|cuda|cuda:N` -> a device; `auto` picks CUDA when available.

    A `torch.device` is returned as it is.

    Under torchrun, `cuda` (or `auto` with GPUs) means this rank's local GPU.
    """
    if isinstance(spec, torch.device):
        return spec
    spec = str(spec)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={spec} but CUDA is not available; use device=cpu or auto")
        if spec == "cuda":
            return torch.device("cuda", local_rank)
        index = int(spec.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={spec} but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return torch.device("cuda", index)
    if spec != "cpu":
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def setup_distributed(device: str | torch.device) -> DistInfo:
    """Initialise the process group if torchrun (or submitit, or `srun` with several
    tasks: `glow_train.runtime.cluster`) started us; return this rank's info.

    `device` is the run's `device` setting (`auto|cpu|cuda|cuda:N`).
    """
    export_torch_env()  # submitit / srun tasks: their variables as torchrun's
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    return DistInfo(rank=rank, world_size=world_size, device=dev)


def cleanup_distributed() -> None:
    """Destroy the process group, if one was started (a no-op in a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def process_count() -> int:
    """How many processes agree on each step: the process group's size, 1 without one."""
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (no-op without a process group)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """The element-wise maximum of `t` over the processes, in place (`t` itself alone)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` on every rank (identity without a process group)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class EpochSampler(Sampler[int]):
    """Shuffled, rank-sharded, resumable sample order.

    Epoch `e` uses `randperm(n)` from a generator seeded with `seed + e`,
    truncated so every rank gets `n // world_size` samples (equal batch counts keep
    DDP in step); rank `r` takes every `world_size`-th index starting at `r`.
    `set_epoch(e, start)` skips the first `start` of this rank's samples, which is
    how a resumed run continues mid-epoch with exactly the data it would have seen.
    """

    def __init__(self, n: int, *, seed: int, rank: int, world_size: int):
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.per_rank = n // world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Shuffle for `epoch` and start at item `start` of this process's share (on resume)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=gen)
        mine = order[: self.per_rank * self.world_size][self.rank :: self.world_size]
        return iter(mine[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


def shard_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    """Fixed evaluation batches `[0..b), [b..2b), …` dealt round-robin to ranks.

    Batch `i` always holds the same images, whatever the number of ranks, so
    noise seeded by the batch index makes a sharded evaluation equal a
    single-process one.
    """
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return batches[rank::world_size]


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """`module` in `DistributedDataParallel`, set for a flow's training step.

    - Buffers are synchronised when DDP is built (rank 0's), not at every forward pass:
      a flow's buffers (ActNorm's `initialized`, the 1×1 convolutions' fixed
      permutations and signs) never change while it trains, and a Glow has hundreds.
    - Gradients are views of DDP's communication buckets (`gradient_as_bucket_view`):
      no copy of every gradient into them and back.
    - `static_graph`: every step runs the same layers on the same parameters (a
      class head without a class loss is unused at every step alike), so DDP learns
      the graph at the first step and skips its search for unused parameters.
    """
    options: dict = {"gradient_as_bucket_view": True, "static_graph": True}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        options["forward_sync_buffers"] = False  # PyTorch 2.13+: still synced at init
    else:
        options["broadcast_buffers"] = False
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, **options)
