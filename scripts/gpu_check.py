#!/usr/bin/env python
"""The first GPU session's check: is the training step launch-bound or compute-bound?

One call, under 8 minutes on an H100, no network. Each row is printed and appended to
the JSON file (`--json`, rewritten whole after every row) as soon as it is measured,
so a run cut short keeps every row before the cut; the compile rows come last.

Rows, in order (the model is the CIFAR-10 preset's, K=32, L=3, 512 hidden, unless
`--tiny`; data are synthetic CIFAR-shaped images, read before any timing):

- `environment`: torch, device, compute capability, native bf16, TF32 flags.
- `flops`: FLOPs per image of a training step, forward and backward
  (`torch.utils.flop_counter.FlopCounterMode`), the numerator of every MFU figure.
- `kernels fp32|bf16`: operators that launch a kernel, per training step (a dispatch
  mode, batch 2): the eager step's launch count.
- `bf16 vs fp32`: the same weights and batch in both precisions (bits/dim apart).
- `sync debug` (CUDA): steady-state steps under `torch.cuda.set_sync_debug_mode("error")`.
- `cuda vs cpu` (CUDA): log-density and log-determinant of the same weights and batch,
  float64 on the CPU against float32 on CUDA with TF32 off, then on.
- `step <precision> <mode> batch N` (CUDA): images/s, GPU-busy fraction and kernels
  per step (`torch.profiler`), MFU, peak memory, skipped steps: bf16 at batch 64,
  256 and 512, fp32 (TF32) and fp16 (GradScaler) at 64, eager.
- `step flowpp bf16 eager batch 64` (CUDA): the same for `experiment=cifar10_flowpp`
  (logistic-mixture couplings, attention conditioners; `--tiny` shrinks it), without MFU
  (the `flops` row counts the Glow model).
- `ddp 1 rank` (CUDA): one NCCL process group of one rank, steps through DDP.
- the same `step` rows compiled (`train.compile=true`), last.

    python scripts/gpu_check.py                   # on a CUDA machine
    python scripts/gpu_check.py --dry-run --tiny  # the rows that need no CUDA, on the CPU

`--dry-run` (and any run without CUDA) runs the rows that need no CUDA on the CPU and
prints the plan of the others. Exit status 1 if a row failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from glow_train.data import TensorImageDataset
from glow_train.runtime.distributed import DistInfo, wrap_ddp
from glow_train.runtime.tf32 import set_tf32
from glow_train.training import Trainer

#: dense peak TFLOP/s (bf16, tf32) of the GPUs the project may be lent, for MFU
PEAKS = {"H100": (989.0, 494.0), "H200": (989.0, 494.0), "A100": (312.0, 156.0)}


def synthetic_cifar(n: int, seed: int) -> TensorImageDataset:
    """Smooth random colour fields (4x4 upsampled to 32x32) plus pixel noise, uint8."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    images = F.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    images = images + 0.05 * torch.randn(images.shape, generator=gen)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return TensorImageDataset(images, torch.zeros(n, dtype=torch.long), num_classes=0)


class Report:
    """Prints each row and rewrites the JSON file with every row so far."""

    def __init__(self, path: Path | None):
        self.path, self.rows, self.failed = path, [], False

    def add(self, name: str, **values) -> None:
        row = {"row": name, **values}
        self.rows.append(row)
        self.failed |= "error" in row
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in values.items())
        print(f"{name}: {shown}", flush=True)
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.rows, indent=1))
            os.replace(tmp, self.path)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class OpCounter(TorchDispatchMode):
    """Counts the operators that compute (launch a kernel on a GPU): all but views."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in ("promote_types",):
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def make_trainer(
    args, device, precision: str, batch: int, compiled: bool = False, flowpp: bool = False
) -> Trainer:
    if flowpp:  # the Flow++ preset as it is (shrunk with --tiny)
        overrides = ["experiment=cifar10_flowpp", f"dataset.batch_size={batch}"]
        if args.tiny:
            overrides += ["model.K=2", "model.hidden_channels=16", "model.conditioner_blocks=1"]
            overrides += ["model.attention_heads=2", "model.mixture_components=4"]
    else:
        overrides = ["dataset=cifar10", f"model.K={args.K}", f"model.L={args.L}"]
        overrides += [f"model.hidden_channels={args.hidden}", f"dataset.batch_size={batch}"]
    overrides += ["dataset.num_workers=0", f"precision={precision}", f"device={device}"]
    overrides += [f"train.compile={str(compiled).lower()}", "train.progress=false"]
    overrides += [f"train.init_samples={min(256, 4 * batch)}", "train.max_steps=1000"]
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    data = synthetic_cifar(max(4 * batch, 64), 0)
    return Trainer(cfg, DistInfo(device=device), Path(tempfile.mkdtemp()), data, data, data)


def batches(trainer: Trainer, n: int) -> list:
    """`n` prepared batches on the device: data loading stays outside the timed loop."""
    loader = iter(trainer.loader)
    return [trainer.prepare_batch(next(loader), i) for i in range(n)]


def row_environment(args, device, report: Report) -> None:
    values = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        values["name"] = torch.cuda.get_device_name(device)
        values["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        values["bf16"] = torch.cuda.is_bf16_supported(including_emulation=False)
        values["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        values["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    report.add("environment", **values)


def row_flops(args, report: Report) -> float:
    trainer = make_trainer(args, torch.device("cpu"), "fp32", 2)
    trainer.prepare()
    x, noise, y = batches(trainer, 1)[0]
    with FlopCounterMode(display=False) as counter:
        trainer.objective.score(trainer.objective(x, noise, y)).mean().backward()
    per_image = counter.get_total_flops() / x.shape[0]
    report.add("flops", per_image_gflop=per_image / 1e9)
    return per_image


def row_kernels(args, precision: str, report: Report) -> None:
    trainer = make_trainer(args, torch.device("cpu"), precision, 2)
    trainer.prepare()
    prepared = batches(trainer, 3)
    for b in prepared[:2]:
        trainer.train_step(*b)
    with OpCounter() as counter:
        trainer.train_step(*prepared[2])
    top = ", ".join(f"{k} {v}" for k, v in counter.ops.most_common(4))
    report.add(f"kernels {precision}", per_step=sum(counter.ops.values()), top=top)


@torch.no_grad()
def row_bf16_vs_fp32(args, device, report: Report) -> None:
    trainer = make_trainer(args, device, "fp32", 16)
    trainer.prepare()
    _perturb(trainer.objective)
    x, noise, y = batches(trainer, 1)[0]
    fp32 = trainer.objective.score(trainer.objective(x, noise, y))
    with torch.autocast(device.type, dtype=torch.bfloat16):
        bf16 = trainer.objective.score(trainer.objective(x, noise, y))
    report.add(
        "bf16 vs fp32", bpd_fp32=fp32.mean().item(), max_abs_bpd=(bf16 - fp32).abs().max().item()
    )


def _perturb(module, scale: float = 0.02) -> None:
    """Move the zero-initialised layers off zero (same seed, same weights)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen).to(p.device, p.dtype))


def row_sync_debug(args, device, report: Report) -> None:
    trainer = make_trainer(args, device, "auto", 64)
    trainer.prepare()
    prepared = batches(trainer, 5)
    for b in prepared[:2]:
        trainer.train_step(*b)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in prepared[2:]:
            trainer.train_step(*b)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    report.add("sync debug", steady_state_steps=3, syncs=0)


@torch.no_grad()
def row_cuda_vs_cpu(args, device, report: Report) -> None:
    trainer = make_trainer(args, torch.device("cpu"), "fp32", 16)
    trainer.prepare()
    _perturb(trainer.objective)
    x, noise, _ = batches(trainer, 1)[0]
    flow = trainer.model.double().eval()
    inputs = (x + noise).double() if noise is not None else x.double()
    ref_lp, (_, ref_ld) = flow.log_prob(inputs), flow.encode(inputs)
    flow = flow.float().to(device)
    dims = inputs[0].numel() * torch.log(torch.tensor(2.0)).item()
    for tf32 in (False, True):
        set_tf32(tf32)
        cuda_in = inputs.float().to(device)
        lp, (_, ld) = flow.log_prob(cuda_in), flow.encode(cuda_in)
        report.add(
            f"cuda vs cpu (tf32 {'on' if tf32 else 'off'})",
            max_abs_bpd=((lp.double().cpu() - ref_lp).abs().max() / dims).item(),
            max_rel_logdet=((ld.double().cpu() - ref_ld).abs() / ref_ld.abs().clamp_min(1))
            .max()
            .item(),
        )
    set_tf32(True)


def row_step(
    args,
    device,
    precision: str,
    batch: int,
    compiled: bool,
    flops: float,
    report: Report,
    flowpp: bool = False,
) -> None:
    trainer = make_trainer(args, device, precision, batch, compiled, flowpp)
    trainer.prepare()
    prepared = batches(trainer, 4)
    for i in range(args.warmup):
        trainer.train_step(*prepared[i % 4])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for i in range(args.steps):
        trainer.train_step(*prepared[i % 4])
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.steps
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    profiled = 5
    with torch.profiler.profile(activities=activities) as prof:
        wall = time.perf_counter()
        for i in range(profiled):
            trainer.train_step(*prepared[i % 4])
        torch.cuda.synchronize()
        wall = time.perf_counter() - wall
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_us = sum(e.time_range.elapsed_us() for e in kernels)
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    images = batch / seconds
    mfu = None
    if peak is not None and not flowpp:
        mfu = flops * images / ((peak[0] if precision != "fp32" else peak[1]) * 1e12)
    report.add(
        f"step {'flowpp ' * flowpp}{precision} {'compiled' if compiled else 'eager'} batch {batch}",
        images_per_s=images,
        gpu_busy=busy_us / 1e6 / wall,
        kernels_per_step=len(kernels) // profiled,
        mfu=mfu,
        peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30,
        compile_s=trainer.compile_seconds,
        skipped=trainer.progress.skipped_steps,
    )


def row_ddp(args, device, report: Report) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29512")
    torch.distributed.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    try:
        trainer = make_trainer(args, device, "auto", 64)
        trainer.prepare()
        trainer.steps.wrapped = wrap_ddp(trainer.objective, device)
        prepared = batches(trainer, 4)
        for b in prepared[:2]:
            trainer.train_step(*b)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for b in prepared:
            trainer.train_step(*b)
        torch.cuda.synchronize()
        trainer.settle()
        images = 64 * len(prepared) / (time.perf_counter() - started)
        report.add("ddp 1 rank", images_per_s=images, skipped=trainer.progress.skipped_steps)
    finally:
        torch.distributed.destroy_process_group()


def plan(args, cuda: bool) -> list[tuple[str, bool, object]]:
    """`(name, needs CUDA, run)` of every row, in order."""
    rows = [
        ("environment", False, lambda r, c: row_environment(args, c["device"], r)),
        ("flops", False, lambda r, c: c.update(flops=row_flops(args, r))),
        ("kernels fp32", False, lambda r, c: row_kernels(args, "fp32", r)),
        ("kernels bf16", False, lambda r, c: row_kernels(args, "bf16", r)),
        ("bf16 vs fp32", False, lambda r, c: row_bf16_vs_fp32(args, c["device"], r)),
        ("sync debug", True, lambda r, c: row_sync_debug(args, c["device"], r)),
        ("cuda vs cpu", True, lambda r, c: row_cuda_vs_cpu(args, c["device"], r)),
    ]
    steps = [("bf16", b, False) for b in args.batches]
    steps += [("fp32", args.batches[0], False), ("fp16", args.batches[0], False)]
    compiled = [("bf16", b, True) for b in args.batches]
    for precision, batch, comp in steps:
        name = f"step {precision} eager batch {batch}"
        rows.append((name, True, _step(args, precision, batch, comp)))
    flowpp = f"step flowpp bf16 eager batch {args.batches[0]}"
    rows.append((flowpp, True, _step(args, "bf16", args.batches[0], False, flowpp=True)))
    rows.append(("ddp 1 rank", True, lambda r, c: row_ddp(args, c["device"], r)))
    for precision, batch, comp in compiled:
        name = f"step {precision} compiled batch {batch}"
        rows.append((name, True, _step(args, precision, batch, comp)))
    return rows


def _step(args, precision, batch, compiled, flowpp=False):
    return lambda r, c: row_step(
        args, c["device"], precision, batch, compiled, c["flops"], r, flowpp
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU rows only; plan the rest")
    parser.add_argument("--tiny", action="store_true", help="K=2, L=2, hidden 16, batches 4,8")
    parser.add_argument("--json", default="gpu_check.json", help="the rows, rewritten per row")
    parser.add_argument("--batches", default="64,256,512")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per step row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per step row")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip rows after this")
    parser.add_argument("--K", type=int, default=32)
    parser.add_argument("--L", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.tiny:
        args.K, args.L, args.hidden, args.batches = 2, 2, 16, [4, 8]
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    report, context, started = Report(Path(args.json) if args.json else None), {}, time.time()
    context.update(device=device, flops=float("nan"))
    print(f"gpu_check: K={args.K} L={args.L} hidden={args.hidden} on {device}", flush=True)
    for name, needs_cuda, run in plan(args, cuda):
        if needs_cuda and not cuda:
            print(f"planned (needs CUDA): {name}", flush=True)
            continue
        if time.time() - started > args.budget_s:
            report.add(name, skipped=f"over the {args.budget_s:.0f} s budget")
            continue
        try:
            run(report, context)
        except Exception as err:  # a failed row is a row: the next ones still run
            traceback.print_exc()
            report.add(name, error=f"{type(err).__name__}: {err}"[:300])
    print(f"gpu_check: {len(report.rows)} rows in {time.time() - started:.0f} s", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
