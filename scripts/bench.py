#!/usr/bin/env python
"""Training and sampling throughput of glow-train, and of normflows with --peers, in one process.

Every system is built at the same architecture (a multi-scale Glow of L levels of K
steps with `--hidden` conditioner channels, affine coupling, LU 1x1 convolutions) on
random images of the given shape; each is warmed up, then timed in alternation with
the others, and the median of `--repeats` blocks is reported. Absolute figures on a
shared machine move from run to run: compare ratios from one run. With --peers the
speed-ups over normflows are medians of ratios taken within each block (neighbouring
timings share the machine's momentary speed), with their range.

    python scripts/bench.py             # glow-train alone, CPU
    python scripts/bench.py --peers     # with normflows (pip install -e '.[bench]')
    python scripts/bench.py --conditioners   # the conditioners alone, ours vs nn.Conv2d
    python scripts/bench.py --peers --mixture 8   # and the logistic_mixture coupling (K=8)
    python scripts/bench.py --peers --device cuda --K 32 --hidden 512 --batch-size 64 \
        --json out.json

With `--mixture K` the same model with `model.coupling=logistic_mixture` (K logistic
components, the conv conditioner) is timed beside it, and its step and sampling times
are reported as ratios to the affine coupling's, within each block. Its conditioners
end in `2 + 3K` outputs per changed value where the affine coupling's end in 2, so it
has more parameters and FLOPs at the same width: with --peers it is also compared with
a normflows Glow made as large (the narrowest `--hidden` + 8n with at least its
parameter count). The models sampled from have random weights in their couplings'
zero-initialised output layers (`--output-std`, see `as_if_trained`): at
initialisation every mixture coupling is the identity, whose inverse takes one Newton
step; with the default 0.5 each takes 5 to 7 here, where the couplings of the digits
preset's trained model take 2 to 7.

Columns: training images/s (forward, backward, Adam step), sampling images/s (decode
`--samples` images at T=0.7, three times per block), and peak memory: CUDA's
max_memory_allocated per configuration, or on CPU the process's peak resident set
size so far (monotone).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from glow_train import Glow, keep_freed_memory
from glow_train.training.optim import make_optimizer


def glow_model(args, mixture: int = 0) -> Glow:
    """The benchmark's Glow: affine couplings, or `logistic_mixture` ones of `mixture`
    components."""
    coupling = "logistic_mixture" if mixture else "affine"
    return Glow(
        args.channels, args.size, args.K, args.L, args.hidden, coupling, True,
        mixture_components=mixture or 32,
    )  # fmt: skip


def glow_train_system(
    args, device, precision: str, memory_saving: bool, compiled: bool = False, mixture: int = 0
):
    model = glow_model(args, mixture).to(device)
    x0 = torch.rand(args.batch_size, args.channels, args.size, args.size, device=device) - 0.5
    model.initialize(x0)
    sampler = copy.deepcopy(model)  # sampling times do not follow the training steps
    if args.output_std:
        as_if_trained(sampler, args.samples, args.output_std)
    model.set_memory_saving(memory_saving)
    # glow-train's own choice of implementation (fused Adam on CPU and CUDA).
    opt = make_optimizer(list(model.parameters()), "adam", 1e-4, (0.9, 0.999), 0.0, device.type)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    )

    density = torch.compile(model) if compiled else model  # calling it gives log_prob

    def step():
        x = torch.rand_like(x0) - 0.5
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = -density(x).mean()
        loss.backward()
        opt.step()

    def sample():
        with torch.no_grad(), autocast():
            sampler.eval()
            sampler.sample(args.samples, 0.7)

    return step, sample


def as_if_trained(model, samples: int, std: float) -> None:
    """Give the couplings' zero-initialised output layers random weights, scaled (in
    the order sampling meets them) so that each outputs values of standard deviation
    about ``std`` while ``samples`` images are drawn: at initialisation every mixture
    coupling is the identity, whose inverse takes one Newton step, where a trained
    model's take several. Only a mixture coupling's weights and means move: with its
    affine part and log-scales left at zero, every inverse shifts its values rather
    than scales them, and 24 random couplings in a row do not blow the samples up as
    random scales would (a trained model keeps their scale). The sampling cost of the
    affine coupling and of normflows does not depend on the weights."""
    from glow_train.flows.conditioner import ZeroInit
    from glow_train.flows.coupling import Coupling
    from glow_train.flows.logistic_mixture import LogisticMixtureCoupling, mixture_parameters

    gen = torch.Generator().manual_seed(0)
    hooks = {}

    def calibrate(layer, _inputs, out):
        hooks.pop(layer).remove()  # the first call only
        factor = std / float(out.std())
        layer.layer.weight.data.mul_(factor)
        return out * factor

    for coupling in model.modules():
        outs = [m for m in coupling.modules() if isinstance(m, ZeroInit)]
        if not isinstance(coupling, Coupling | LogisticMixtureCoupling) or not outs:
            continue
        w = outs[-1].layer.weight
        w.data.copy_(torch.randn(w.shape, generator=gen).to(w))
        if isinstance(coupling, LogisticMixtureCoupling):  # a, b and the log-scales stay 0
            k = coupling.components
            rows = w.data.view(-1, mixture_parameters(k), *w.shape[1:])
            rows[:, :2] = 0
            rows[:, 2 + 2 * k :] = 0
        hooks[outs[-1]] = outs[-1].register_forward_hook(calibrate)
    with torch.no_grad():  # in training mode: the layers one by one, the hooks called
        model.sample(samples, 0.7)
    assert not hooks, "a coupling's output layer was not met while sampling"


def normflows_parameters(args, hidden: int) -> int:
    return sum(p.numel() for p in normflows_model(args, hidden, torch.device("cpu")).parameters())


def normflows_model(args, hidden: int, device):
    import normflows as nf

    c, size, L = args.channels, args.size, args.L
    q0, merges, flows = [], [], []
    for i in range(L):
        blocks = [nf.flows.GlowBlock(c * 2 ** (L + 1 - i), hidden) for _ in range(args.K)]
        flows.append([*blocks, nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            shape = (c * 2 ** (L - i), size // 2 ** (L - i), size // 2 ** (L - i))
        else:
            shape = (c * 2 ** (L + 1), size // 2**L, size // 2**L)
        q0.append(nf.distributions.DiagGaussian(shape))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False).to(device)


def normflows_system(args, device, hidden: int):
    model = normflows_model(args, hidden, device)
    c, size = args.channels, args.size
    x0 = torch.rand(args.batch_size, c, size, size, device=device) - 0.5
    with torch.no_grad():
        model.forward_kld(x0)  # ActNorm's data-dependent initialisation
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        x = torch.rand_like(x0) - 0.5
        opt.zero_grad(set_to_none=True)
        model.forward_kld(x).backward()
        opt.step()

    def sample():
        with torch.no_grad():
            model.sample(args.samples, temperature=0.7)

    return step, sample


def conditioner_ceiling(args, device) -> None:
    """Time the couplings' conditioners alone (no flow, no log-dets), ours against plain
    ``nn.Conv2d`` layers on default-layout maps (what normflows' GlowBlock runs), in
    alternation: the speed-up the convolution kernels themselves allow."""
    from torch import nn

    from glow_train.flows.conditioner import conv_conditioner

    def plain(c_in: int, c_out: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(c_in, args.hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(args.hidden, args.hidden, 1),
            nn.ReLU(),
            nn.Conv2d(args.hidden, c_out, 3, padding=1),
        )

    cl = torch.channels_last
    for phase, batch in (("train", args.batch_size), ("sample", args.samples)):
        sets: dict[str, list] = {"glow-train": [], "nn.Conv2d NCHW": []}
        c, size = args.channels, args.size
        for _ in range(args.L):
            c, size = 4 * c, size // 2
            for _ in range(args.K):
                ours = conv_conditioner(c // 2, args.hidden, c).to(device, memory_format=cl)
                x = torch.randn(batch, c, size, size, device=device)
                sets["glow-train"].append((ours, x.contiguous(memory_format=cl)[:, : c // 2]))
                sets["nn.Conv2d NCHW"].append((plain(c // 2, c).to(device), x[:, : c // 2]))
            c //= 2

        def run(pairs, phase=phase) -> None:
            with torch.set_grad_enabled(phase == "train"):
                total = sum(
                    net(x.requires_grad_(phase == "train")).square().mean() for net, x in pairs
                )
                if phase == "train":
                    total.backward()

        times: dict[str, list[float]] = {name: [] for name in sets}
        for pairs in sets.values():
            run(pairs)
        for repeat in range(args.repeats):
            for name in rotated(list(sets), repeat):
                pairs = sets[name]
                times[name].append(timed(lambda pairs=pairs: run(pairs), args.steps, device))
        speedup, low, high = paired_speedup(times["nn.Conv2d NCHW"], times["glow-train"])
        print(
            f"conditioners alone, {phase} (batch {batch}): glow-train "
            f"{statistics.median(times['glow-train']) * 1e3:.1f} ms, nn.Conv2d NCHW "
            f"{statistics.median(times['nn.Conv2d NCHW']) * 1e3:.1f} ms, speed-up "
            f"{speedup:.2f}x [{low:.2f}-{high:.2f}]"
        )


def rotated(names: list[str], block: int) -> list[str]:
    """The order to time ``names`` in within block ``block``: each block starts one
    system later, so no system always follows the same one."""
    shift = block % len(names)
    return names[shift:] + names[:shift]


def paired_speedup(peer: list[float], ours: list[float]) -> tuple[float, float, float]:
    """Median, min and max over the blocks of ``peer time / our time`` within each block."""
    ratios = [p / o for p, o in zip(peer, ours, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def timed(fn: Callable[[], None], calls: int, device) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / calls


def peak_memory_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--K", type=int, default=8)
    parser.add_argument("--L", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--peers", action="store_true", help="also time normflows")
    parser.add_argument("--json", help="also write the table here")
    parser.add_argument(
        "--mixture", type=int, default=0, metavar="K",
        help="also time the logistic_mixture coupling with K components",
    )  # fmt: skip
    parser.add_argument(
        "--output-std", type=float, default=0.5, metavar="S",
        help="give the couplings' zero-initialised output layers random weights, their "
        "outputs of about this standard deviation while sampling (0: leave them at zero)",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile'd training steps"
    )
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="leave glibc's malloc thresholds alone (the console scripts raise them; "
        "the setting is process-wide, so it applies to the peers too)",
    )
    parser.add_argument(
        "--conditioners",
        action="store_true",
        help="only time the conditioners alone against plain nn.Conv2d ones, in float32 "
        "(forward and backward at --batch-size, forward at --samples)",
    )
    args = parser.parse_args()
    if not args.default_allocator:
        keep_freed_memory()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.conditioners:
        conditioner_ceiling(args, device)
        return

    systems = {
        "glow-train fp32": glow_train_system(args, device, "fp32", False),
        "glow-train bf16": glow_train_system(args, device, "bf16", False),
        "glow-train fp32 memory-saving": glow_train_system(args, device, "fp32", True),
    }
    if args.compile:
        for precision in ("fp32", "bf16"):
            started = time.perf_counter()
            step, sample = glow_train_system(args, device, precision, False, compiled=True)
            step()  # compiles
            print(f"compiling the {precision} step took {time.perf_counter() - started:.0f} s")
            systems[f"glow-train {precision} compiled"] = (step, sample)
    for precision in ("fp32", "bf16") if args.mixture else ():
        name = f"glow-train {precision} logistic_mixture"
        systems[name] = glow_train_system(args, device, precision, False, mixture=args.mixture)
    if args.peers:
        systems["normflows fp32"] = normflows_system(args, device, args.hidden)
    matched = None
    if args.peers and args.mixture:  # normflows' Glow with as many parameters
        size = sum(p.numel() for p in glow_model(args, args.mixture).parameters())
        hidden = args.hidden
        while normflows_parameters(args, hidden) < size:
            hidden += 8
        matched = f"normflows fp32, hidden {hidden} (the parameters of logistic_mixture)"
        systems[matched] = normflows_system(args, device, hidden)
    for step, sample in systems.values():
        for _ in range(args.warmup):
            step()
        sample()
    train_s = {name: [] for name in systems}
    sample_s = {name: [] for name in systems}
    memory = {}
    for repeat in range(args.repeats):
        for name in rotated(list(systems), repeat):  # alternate: load affects all alike
            step, sample = systems[name]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            train_s[name].append(timed(step, args.steps, device))
            sample_s[name].append(timed(sample, 3, device))
            memory[name] = max(memory.get(name, 0.0), peak_memory_mib(device))
    rows = []
    for name in systems:
        rows.append(
            {
                "system": name,
                "train_images_per_s": args.batch_size / statistics.median(train_s[name]),
                "sample_images_per_s": args.samples / statistics.median(sample_s[name]),
                "peak_memory_mib": memory[name],
            }
        )
    shape = f"{args.channels}x{args.size}x{args.size}, K={args.K}, L={args.L}, hidden {args.hidden}"
    allocator = "default allocator" if args.default_allocator else "freed memory kept"
    print(f"{shape}, batch {args.batch_size}, {device}, {allocator}, median of {args.repeats}")
    print("| system | train img/s | sample img/s | peak memory (MiB) |")
    print("|---|---|---|---|")

    def rate(v: float) -> str:
        return f"{v:.0f}" if v >= 100 else f"{v:.3g}"

    for r in rows:
        print(
            f"| {r['system']} | {rate(r['train_images_per_s'])} | "
            f"{rate(r['sample_images_per_s'])} | {r['peak_memory_mib']:.0f} |"
        )
    by_name = {r["system"]: r for r in rows}
    plain, saving = by_name["glow-train fp32"], by_name["glow-train fp32 memory-saving"]
    print(
        "memory-saving step time / plain step time: "
        f"{plain['train_images_per_s'] / saving['train_images_per_s']:.2f}x"
    )
    for precision in ("fp32", "bf16") if args.mixture else ():
        affine, mixture = f"glow-train {precision}", f"glow-train {precision} logistic_mixture"
        parts = []
        for kind, times in (("step", train_s), ("sampling", sample_s)):
            ratio, low, high = paired_speedup(times[mixture], times[affine])
            by_name[mixture][f"{kind}_time_over_affine"] = ratio
            parts.append(f"{kind} {ratio:.2f}x [{low:.2f}-{high:.2f}]")
        print(f"logistic_mixture (K={args.mixture}) / affine time, {precision}: {', '.join(parts)}")
    peer = "normflows fp32" if args.peers else None
    if matched is not None:
        for precision in ("fp32", "bf16"):
            mixture = by_name[f"glow-train {precision} logistic_mixture"]
            parts = []
            for kind, times in (("train", train_s), ("sample", sample_s)):
                speedup, low, high = paired_speedup(times[matched], times[mixture["system"]])
                mixture[f"{kind}_speedup_over_matched_peer"] = speedup
                parts.append(f"{kind} {speedup:.2f}x [{low:.2f}-{high:.2f}]")
            print(f"{mixture['system']} over {matched}: {', '.join(parts)}")
    if peer is not None:
        print(
            "speed-ups over normflows fp32, each the median over the repeats of the ratio "
            "within one repeat (min-max in brackets):"
        )
        for r in rows:
            name = r["system"]
            if name.startswith("normflows"):
                continue
            parts = []
            for kind, times in (("train", train_s), ("sample", sample_s)):
                speedup, low, high = paired_speedup(times[peer], times[name])
                r[f"{kind}_speedup_over_peer"] = speedup
                r[f"{kind}_speedup_range"] = [low, high]
                parts.append(f"{kind} {speedup:.2f}x [{low:.2f}-{high:.2f}]")
            print(f"{name}: {', '.join(parts)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2, allow_nan=False)
    assert all(math.isfinite(r["train_images_per_s"]) for r in rows)


if __name__ == "__main__":
    main()
