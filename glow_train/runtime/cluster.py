"""Rank, world size and rendezvous from a cluster scheduler when torchrun is absent.

torchrun exports `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and
`MASTER_PORT`; `glow_train.runtime.distributed.setup_distributed` reads those. A job
started by submitit (`hydra/launcher=slurm_gpu` or `submitit_local`) or by
`srun` with several tasks has its own variables instead; `export_torch_env`
translates them, so one `glow-train` per task forms one process group.

- submitit (`SUBMITIT_EXECUTOR` is set): its `TorchDistributedEnvironment`
  helper, with the port derived from the job id (every task agrees on it).
- plain SLURM (`srun`: `SLURM_PROCID` and `SLURM_STEP_NUM_TASKS` > 1): rank
  `SLURM_PROCID`, local rank `SLURM_LOCALID`, the first host of
  `SLURM_STEP_NODELIST` as the rendezvous address and a port from the job id.
"""

from __future__ import annotations

import os
import re

__all__ = ["export_torch_env", "first_host"]

TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[003-005,007],cpu1` -> `gpu003`."""
    entry = re.split(r",(?![^\[]*\])", nodelist.strip())[0]
    match = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", entry)
    if not match:
        return entry
    prefix, ranges, suffix = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] + suffix


def export_torch_env() -> str | None:
    """Set torchrun's variables from submitit's or SLURM's when torchrun's are absent;
    return which scheduler provided them (`"submitit"`, `"slurm"`) or `None`."""
    if "RANK" in os.environ:
        return None
    if os.environ.get("SUBMITIT_EXECUTOR"):
        from submitit.helpers import TorchDistributedEnvironment

        env = TorchDistributedEnvironment()
        if env.world_size < 2:
            return None
        env.export(set_cuda_visible_devices=False)  # LOCAL_RANK picks the GPU
        return "submitit"
    tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    if "SLURM_PROCID" not in os.environ or tasks < 2:
        return None
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    job = int(os.environ.get("SLURM_JOB_ID", "0"))
    os.environ.update(
        RANK=os.environ["SLURM_PROCID"],
        WORLD_SIZE=str(tasks),
        LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"),
        MASTER_ADDR=os.environ.get("MASTER_ADDR") or first_host(nodes) or "127.0.0.1",
        MASTER_PORT=os.environ.get("MASTER_PORT") or str(20000 + job % 40000),
    )
    return "slurm"
