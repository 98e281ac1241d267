#!/usr/bin/env python
"""A ready GPU check: short CIFAR-shaped trainings in fp32, bf16, fp16 and bf16 + compile.

Runs the trainer's own step (glow_train.training.Trainer.train_step) on CIFAR-10 when
it is found under --data-root, else on synthetic CIFAR-shaped uint8 images (smooth
random colour fields plus noise, so there is something to learn), and prints a
table: images/s, peak GPU memory, first and final train bits/dim, test bits/dim,
skipped steps (non-finite loss or gradients), fp16 overflows (steps the GradScaler
skipped while calibrating its scale, expected early on), and whether the loss fell.
Needs no network.

    python scripts/gpu_check.py                      # on a CUDA machine, about 5 minutes
    python scripts/gpu_check.py --tiny --device cpu  # a seconds-long smoke run on CPU

Exit status 1 if any run skipped a step or its loss did not fall.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from glow_train.data import TensorImageDataset, build_dataset
from glow_train.errors import GlowError
from glow_train.runtime.distributed import DistInfo, resolve_device
from glow_train.training import Trainer

RUNS = [  # (name, precision, compile)
    ("fp32", "fp32", False),
    ("bf16", "bf16", False),
    ("fp16", "fp16", False),
    ("bf16+compile", "bf16", True),
]


def synthetic_cifar(n: int, seed: int) -> TensorImageDataset:
    """Smooth random colour fields (4x4 upsampled to 32x32) plus pixel noise, uint8."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    images = F.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    images = images + 0.05 * torch.randn(images.shape, generator=gen)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return TensorImageDataset(images, torch.zeros(n, dtype=torch.long), num_classes=0)


def load_data(args) -> tuple[object, object, str]:
    try:
        cfg = {"name": "cifar10", "root": args.data_root, "download": False}
        cfg |= {"image_size": 32, "channels": 3, "n_bits": 8, "hflip": True}
        cfg |= {"batch_size": args.batch_size, "eval_batch_size": 256, "num_workers": 0}
        train_set = build_dataset(cfg, "train")
        test = build_dataset(cfg, "test")
        test = torch.utils.data.Subset(test, range(min(len(test), args.test_images)))
        return train_set, test, f"CIFAR-10 from {args.data_root}"
    except GlowError:
        n_train = max(args.batch_size * 8, 512)
        return (
            synthetic_cifar(n_train, 0),
            synthetic_cifar(args.test_images, 1),
            "synthetic CIFAR-shaped images (CIFAR-10 not found)",
        )


def run_one(name, precision, use_compile, args, device, train_set, test_set) -> dict:
    overrides = [
        "experiment=cifar10",
        f"model.K={args.K}",
        f"model.L={args.L}",
        f"model.hidden_channels={args.hidden}",
        f"dataset.batch_size={args.batch_size}",
        "dataset.eval_batch_size=256",
        "dataset.num_workers=0",
        f"precision={precision}",
        f"train.compile={str(use_compile).lower()}",
        f"train.max_steps={args.steps}",
        "train.warmup_steps=20",
        "train.lr=1e-3",
        "train.cosine_decay=false",
        "train.init_samples=256",
        "train.progress=false",
        f"device={device}",
    ]
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, DistInfo(device=device), Path(run_dir), train_set, test_set)
        trainer.prepare()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        losses, started, timed_images = [], None, 0
        batches = iter(())
        for step in range(args.steps):
            try:
                batch = next(batches)
            except StopIteration:
                trainer.sampler.set_epoch(step)
                batches = iter(trainer.loader)
                batch = next(batches)
            if step == args.warmup:  # the first steps include compilation and autotuning
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
            stats = trainer.train_step(*trainer.prepare_batch(batch, step))
            if stats["score"] is not None:  # the default step reports the previous one's
                losses.append(stats["score"])
            if started is not None:
                timed_images += len(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started if started is not None else float("nan")
        trainer.settle()  # the last step's outcome
        test_bpd = trainer.evaluate()
        k = max(1, min(10, len(losses) // 4))
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        return {
            "run": name,
            "images_per_s": timed_images / elapsed if elapsed > 0 else float("nan"),
            "peak_mem_gib": (
                torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            ),
            "first_bpd": first,
            "final_bpd": last,
            "test_bpd": test_bpd,
            "skipped": trainer.progress.skipped_steps,
            "overflows": trainer.progress.overflow_steps,
            "loss_fell": last < first,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=150, help="steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--K", type=int, default=32)
    parser.add_argument("--L", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--test-images", type=int, default=1024)
    parser.add_argument("--data-root", default="data/cifar10")
    parser.add_argument("--runs", default=",".join(r[0] for r in RUNS))
    parser.add_argument("--tiny", action="store_true", help="K=2, hidden 16, 20 steps")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.tiny:
        args.K, args.hidden, args.steps, args.warmup = 2, 16, 20, 2
        args.batch_size, args.test_images = 16, 64
    device = resolve_device(args.device)
    train_set, test_set, source = load_data(args)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device {device} ({name}), torch {torch.__version__}; data: {source}; "
        f"K={args.K} L={args.L} hidden={args.hidden} batch={args.batch_size}, "
        f"{args.steps} steps per run",
        flush=True,
    )
    rows = []
    for name, precision, use_compile in RUNS:
        if name not in args.runs.split(","):
            continue
        if precision == "fp16" and device.type != "cuda":
            print(f"skipping {name}: fp16 needs CUDA", flush=True)
            continue
        t0 = time.perf_counter()
        row = run_one(name, precision, use_compile, args, device, train_set, test_set)
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(f"{name}: done in {row['wall_s']:.0f}s", flush=True)
    columns = ["run", "images/s", "peak GPU mem (GiB)", "first bpd", "final bpd", "test bpd"]
    columns += ["skipped", "fp16 overflows", "loss fell", "wall s"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        mem = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] is not None else "-"
        print(
            f"| {r['run']} | {r['images_per_s']:.0f} | {mem} | {r['first_bpd']:.3f} | "
            f"{r['final_bpd']:.3f} | {r['test_bpd']:.3f} | {r['skipped']} | {r['overflows']} | "
            f"{'yes' if r['loss_fell'] else 'NO'} | {r['wall_s']:.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    ok = all(r["loss_fell"] and r["skipped"] == 0 for r in rows)
    return 0 if ok and rows else 1


if __name__ == "__main__":
    sys.exit(main())
