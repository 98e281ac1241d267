"""Regenerate the documentation's pictures (docs/img/*.png) and docs/results.md.

    python scripts/make_figures.py            # or: make figures
    python scripts/make_figures.py --bench    # also the speed ratios against normflows
                                              # (needs the bench extra: pip install -e '.[bench]')

Every figure comes from the console scripts of the installed package, run as a user
would run them (`glow-train`, `glow-sample`, `glow-eval`), on data that needs no
download: the built-in digits, letters drawn by ``scripts/letters.py``,
scikit-learn's breast-cancer table and a simulated AR(1) series. The runs go to
``--work`` (default ``runs/docs``), a folder this script owns: it is emptied at the
start, and a folder it did not make is refused. ``docs/results.md`` lists each
figure with the command that produced it and the commit it was measured on.

It trains six small models one after the other (four on digits at their default
1,300 steps, two 1-D Glows), about ten minutes on a two-core laptop CPU when nothing
else runs; ``--steps N`` trains every model for ``N`` steps instead (a smoke test:
the pictures and figures are then of untrained models and the results page says so).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".made-by-make_figures"
SCALE = 4  # the digits are 8x8 pixels: pictures are enlarged (nearest neighbour)


@dataclass
class Figures:
    """Every figure of the results page, with the commands that produced it."""

    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (what, value, command)

    def add(self, what: str, value: str, *commands: str) -> None:
        self.rows.append((what, value, "<br>".join(f"`{c}`" for c in commands)))


def bin_dir() -> Path:
    """The folder of this interpreter's console scripts (the venv's bin/)."""
    return Path(sys.executable).parent


def run(command: str, cwd: Path) -> tuple[str, float]:
    """Run one shell-like command (a console script or ``python ...``) in ``cwd``;
    return its stdout and wall time. A failure stops the script with its stderr."""
    argv = command.split()
    if argv[0] in ("glow-train", "glow-sample", "glow-eval"):
        argv[0] = str(bin_dir() / argv[0])
    elif argv[0] == "python":
        argv[0] = sys.executable
        if argv[1].startswith("scripts/"):  # this checkout's scripts, from any folder
            argv[1] = str(ROOT / argv[1])
    print(f"$ {command}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"make_figures: `{command}` failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout, seconds


def final_line(stdout: str) -> dict[str, float]:
    """The trainer's last line: ``val <metric>: V (best B); test <metric>: T (final model,
    step S)``, or under early stopping ``val <metric>: B (best, step S); test <metric>: T
    (best.pt, ...)``."""
    match = re.search(
        r"val (?:bpd|nats/dim): (\S+) \(best (\S+)\); test (?:bpd|nats/dim): (\S+) "
        r"\(final model, step (\d+)\)",
        stdout,
    )
    if match is not None:
        val, best, test, step = match.groups()
        return {"val": float(val), "best": float(best), "test": float(test), "step": int(step)}
    match = re.search(
        r"val (?:bpd|nats/dim): (\S+) \(best, step (\d+)\); test (?:bpd|nats/dim): (\S+) "
        r"\(best\.pt",
        stdout,
    )
    if match is None:
        sys.exit(f"make_figures: no final line in the trainer's output:\n{stdout[-2000:]}")
    best, step, test = match.groups()
    return {"val": float(best), "best": float(best), "test": float(test), "step": int(step)}


def startup(stdout: str) -> str:
    """Device and precision from the trainer's start-up line (``device cpu, bf16``)."""
    match = re.search(r"device (\S+), (?:precision \S+ -> )?(fp32|bf16|fp16)", stdout)
    return f"{match.group(1)}, {match.group(2)}" if match else "unknown"


def printed_path(stdout: str, prefix: str = "") -> Path:
    """The first printed line that starts with ``prefix``, as a path."""
    for line in stdout.splitlines():
        if line.startswith(prefix):
            return Path(line[len(prefix) :].strip())
    sys.exit(f"make_figures: no line starting with {prefix!r} in:\n{stdout}")


def enlarge(src: Path, dst: Path, scale: int = SCALE) -> None:
    """Copy a PNG grid, enlarged by nearest neighbour so 8x8 digits can be seen."""
    from PIL import Image

    image = Image.open(src)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    dst.parent.mkdir(parents=True, exist_ok=True)
    image.save(dst, optimize=True)


def read_scalars(tb_dir: Path, tag: str) -> tuple[list[int], list[float]]:
    """One TensorBoard scalar series of a run (``train/bpd``, ``val/bpd``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return [], []
    points = events.Scalars(tag)
    return [p.step for p in points], [p.value for p in points]


def plot_curve(run_dir: Path, dst: Path) -> None:
    """Training and validation bits/dim against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for tag, style in (("train/bpd", "-"), ("val/bpd", "o-")):
        steps, values = read_scalars(run_dir / "tb", tag)
        ax.plot(steps, values, style, label=tag, markersize=4, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    ax.set_ylim(top=min(5.0, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst)
    plt.close(fig)


def per_image(path: Path) -> np.ndarray:
    with open(path, newline="") as f:
        return np.array([float(row["bpd"]) for row in csv.DictReader(f)])


def plot_histogram(inside: np.ndarray, outside: np.ndarray, labels: tuple[str, str], dst: Path):
    """Per-image bits/dim of in- and out-of-distribution images, on one axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    bins = np.linspace(min(inside.min(), outside.min()), max(inside.max(), outside.max()), 40)
    ax.hist(inside, bins=bins, alpha=0.6, density=True, label=labels[0])
    ax.hist(outside, bins=bins, alpha=0.6, density=True, label=labels[1])
    ax.set_xlabel("bits/dim per image")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(dst)
    plt.close(fig)


def write_breast_cancer(path: Path) -> None:
    """scikit-learn's breast-cancer table (569 rows x 30 columns) as a CSV with a header."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(data.feature_names)
        writer.writerows(data.data.tolist())


AR_PHI, AR_SIGMA, AR_LENGTH, AR_WINDOW, AR_STRIDE = 0.8, 0.5, 12_000, 4, 2


def write_ar1(path: Path, seed: int = 0) -> None:
    """A stationary Gaussian AR(1) series x_t = phi x_{t-1} + sigma e_t."""
    rng = np.random.default_rng(seed)
    x = np.empty(AR_LENGTH)
    x[0] = rng.normal(0, AR_SIGMA / np.sqrt(1 - AR_PHI**2))
    noise = rng.normal(0, AR_SIGMA, AR_LENGTH)
    for t in range(1, AR_LENGTH):
        x[t] = AR_PHI * x[t - 1] + noise[t]
    np.savetxt(path, x[:, None], delimiter=",", header="x", comments="", fmt="%.8f")


def gaussian_nll_per_dim(windows: np.ndarray, cov: np.ndarray, mean: np.ndarray) -> float:
    """Mean negative log-density per dimension, in nats, of rows under N(mean, cov)."""
    d = windows.shape[1]
    sign, logdet = np.linalg.slogdet(cov)
    diff = windows - mean
    maha = np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff)
    nll = 0.5 * (maha + logdet + d * np.log(2 * np.pi))
    return float(nll.mean() / d)


def ar1_exact_nll(csv_path: Path) -> float:
    """The true process's density on the test windows the trainer scores."""
    from glow_train.data import dataset_config, load_table

    table = load_table(
        dataset_config("csv", path=str(csv_path), window=AR_WINDOW, stride=AR_STRIDE)
    )
    lags = np.abs(np.arange(AR_WINDOW)[:, None] - np.arange(AR_WINDOW)[None, :])
    cov = AR_SIGMA**2 / (1 - AR_PHI**2) * AR_PHI**lags
    return gaussian_nll_per_dim(table.parts["test"], cov, np.zeros(AR_WINDOW))


def table_gaussian_nll(csv_path: Path) -> float:
    """A full-covariance Gaussian fitted on the training rows, scored on the test rows."""
    from glow_train.data import dataset_config, load_table

    table = load_table(dataset_config("csv", path=str(csv_path)))
    train = table.parts["train"]
    return gaussian_nll_per_dim(table.parts["test"], np.cov(train, rowvar=False), train.mean(0))


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + (" (with uncommitted changes)" if git("status", "--porcelain", "-uno") else "")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, PyTorch {torch.__version__}"


def prepare_work(work: Path) -> None:
    if work.exists():
        if not (work / MARKER).exists():
            sys.exit(
                f"make_figures: --work {work} exists and was not made by this script; "
                "name another folder"
            )
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("this folder is emptied by scripts/make_figures.py\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/docs"), help="the runs' folder")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="the docs folder")
    parser.add_argument(
        "--readme", type=Path, default=ROOT / "README.md", help="the README to update"
    )
    parser.add_argument("--steps", type=int, help="train every model this many steps (smoke)")
    parser.add_argument("--bench", action="store_true", help="also scripts/bench.py --peers")
    args = parser.parse_args()

    measured_on = commit()  # before anything is written
    cwd = Path.cwd()
    rel = args.work  # as the commands name it (relative to the current folder, or absolute)
    prepare_work(cwd / rel)
    img = args.docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    limit = f" train.max_steps={args.steps}" if args.steps else ""
    figs = Figures()
    transcript: list[str] = []  # the README's quick start, as printed
    started = time.perf_counter()

    # 1. The demo: the defaults on digits, at their step budget (no clock limit, so the
    #    figure does not depend on how busy the machine is).
    demo = f"{rel}/demo"
    cmd = f"glow-train train.time_limit=null{limit} run_dir={demo}"
    out, seconds = run(cmd, cwd)
    result = final_line(out)
    transcript += [f"$ {cmd}", *train_summary(out)]
    trained = list(transcript)  # the training guide shows this part
    figs.add(
        "digits, the defaults (`make demo`): test bits/dim of the final model",
        f"**{result['test']:.4f}** (validation {result['val']:.4f}; {result['step']:,} steps, "
        f"{seconds:.0f} s, {startup(out)})",
        cmd,
    )
    cmd = f"glow-eval ckpt={demo}/last.pt draws=4 progress=false"
    out, _ = run(cmd, cwd)
    summary = json.loads(printed_path(out, "eval: ").read_text())
    figs.add(
        "the same model, 4 dequantisation draws per image",
        f"{summary['bpd']:.4f} ± {summary['stderr']:.4f}",
        cmd,
    )
    cmd = f"glow-sample ckpt={demo}/last.pt temperature=0.7 n=64"
    out, _ = run(cmd, cwd)
    transcript += [f"$ {cmd}", *out.splitlines()]
    enlarge(printed_path(out), img / "samples.png")
    cmd = f"glow-eval ckpt={demo}/last.pt progress=false"
    out, _ = run(cmd, cwd)
    transcript += [f"$ {cmd}", *out.splitlines()]
    cmd = f"glow-sample ckpt={demo}/last.pt temperature=[0,0.5,0.7,1.0] layout=rows n=12"
    out, _ = run(cmd, cwd)
    enlarge(printed_path(out), img / "temperatures.png")
    plot_curve(cwd / demo, img / "training_curve.png")
    glow = f"{rel}/affine"
    cmd = f"glow-train model.coupling=affine train.time_limit=null{limit} run_dir={glow}"
    out, seconds = run(cmd, cwd)
    result = final_line(out)
    figs.add(
        "digits, Glow's affine coupling instead of Flow++'s: test bits/dim of the final model",
        f"{result['test']:.4f} (validation {result['val']:.4f}; {result['step']:,} steps, "
        f"{seconds:.0f} s)",
        cmd,
    )

    # 2. The class-conditional model and a grid with one row per class.
    cond = f"{rel}/cond"
    cmd = f"glow-train model.conditional=true train.time_limit=null{limit} run_dir={cond}"
    out, seconds = run(cmd, cwd)
    result = final_line(out)
    figs.add(
        "digits, class-conditional (`model.conditional=true`): test bits/dim of p(x\\|y)",
        f"**{result['test']:.4f}** (validation {result['val']:.4f}; {seconds:.0f} s)",
        cmd,
    )
    out, _ = run(f"glow-sample ckpt={cond}/last.pt y=all n=10", cwd)
    enlarge(printed_path(out), img / "classes.png")

    # 3. Two levels (the model for out-of-distribution work), its OOD scores against
    #    letters, and the latent-space strips.
    two = f"{rel}/two_level"
    cmd = f"glow-train model.L=2 model.K=8 train.lr=5e-3 train.time_limit=null{limit} run_dir={two}"
    out, seconds = run(cmd, cwd)
    result = final_line(out)
    figs.add(
        "digits, two levels of 8 steps: test bits/dim",
        f"{result['test']:.4f} (validation {result['val']:.4f}; {seconds:.0f} s)",
        cmd,
    )
    letters = f"{rel}/letters"
    run(f"python scripts/letters.py {letters}", cwd)
    for name, ckpt in (("two levels", two), ("one level (the defaults)", demo)):
        cmd = f"glow-eval ckpt={ckpt}/last.pt ood={letters}"
        out, _ = run(cmd, cwd)
        json_path = printed_path(out, "eval: ")
        s = json.loads(json_path.read_text())
        figs.add(
            f"out-of-distribution, digits test vs 52 letters, {name}: AUROC by bits/dim; "
            "by typicality",
            f"**{s['auroc_bpd']:.4f}**; {s['auroc_typicality']:.4f} "
            f"(digits {s['bpd_in']:.4f}, letters {s['bpd_ood']:.4f} bits/dim)",
            f"python scripts/letters.py {letters}",
            cmd,
        )
        if ckpt == two:
            plot_histogram(
                per_image(json_path.parent / "per_image.csv"),
                per_image(json_path.parent / "ood_per_image.csv"),
                ("digits (test split)", "letters"),
                img / "ood_histogram.png",
            )
    out, _ = run(f"glow-sample ckpt={two}/last.pt mode=interpolate a=0 b=10 steps=8", cwd)
    enlarge(printed_path(out), img / "interpolation.png")
    run(f"glow-sample ckpt={two}/last.pt mode=direction attribute=0", cwd)
    out, _ = run(
        f"glow-sample ckpt={two}/last.pt mode=manipulate attribute=0 image=1 "
        "alpha=[-1,-0.5,0,0.5,1,1.5]",
        cwd,
    )
    enlarge(printed_path(out), img / "manipulation.png")

    # 4. The 1-D Glow on a public table, against a full-covariance Gaussian.
    bc = cwd / f"{rel}/breast_cancer.csv"
    write_breast_cancer(bc)
    cmd = (
        f"glow-train experiment=tabular dataset.path={rel}/breast_cancer.csv{limit} "
        f"run_dir={rel}/bc"
    )
    out, seconds = run(cmd, cwd)
    result = final_line(out)
    figs.add(
        "1-D Glow, breast-cancer table (569 x 30): test NLL in nats/dim",
        f"**{result['test']:.4f}** (a full-covariance Gaussian on the same split: "
        f"{table_gaussian_nll(bc):.4f}; {seconds:.0f} s)",
        cmd,
    )

    # 5. The 1-D Glow on a simulated AR(1) series, against its exact density.
    ar = cwd / f"{rel}/ar1.csv"
    write_ar1(ar)
    cmd = (
        f"glow-train dataset=csv dataset.path={rel}/ar1.csv dataset.window={AR_WINDOW} "
        f"dataset.stride={AR_STRIDE} model=glow1d model.K=4 model.hidden_features=32 "
        f"train.max_steps={args.steps or 600} train.time_limit=null run_dir={rel}/ar1"
    )
    out, seconds = run(cmd, cwd)
    result = final_line(out)
    figs.add(
        f"1-D Glow, AR(1) series (phi {AR_PHI}, sigma {AR_SIGMA}, {AR_LENGTH:,} values, "
        f"windows of {AR_WINDOW}): test NLL in nats/dim",
        f"**{result['test']:.4f}** (the true density: {ar1_exact_nll(ar):.4f}; {seconds:.0f} s)",
        cmd,
    )

    # 6. Speed against normflows, paired within one process (optional).
    bench_note = ""
    if args.bench:
        json_path = cwd / f"{rel}/bench.json"
        cmd = f"python scripts/bench.py --peers --mixture 4 --json {json_path}"
        run(cmd, cwd)
        rows = {r["system"]: r for r in json.loads(json_path.read_text())["rows"]}
        shown = "python scripts/bench.py --peers --mixture 4"
        size = "3x32x32, K=8, L=3, hidden 128, batch 32"
        for name in ("glow-train fp32", "glow-train bf16"):
            r = rows[name]
            figs.add(
                f"speed-up of {name} over normflows fp32 ({size}): training; sampling",
                f"{r['train_speedup_over_peer']:.2f}x; {r['sample_speedup_over_peer']:.2f}x",
                shown,
            )
        for precision in ("fp32", "bf16"):
            r = rows[f"glow-train {precision} logistic_mixture"]
            figs.add(
                f"logistic_mixture coupling (K=4), {precision}: time per training step; per "
                f"sample, over the affine coupling's ({size})",
                f"{r['step_time_over_affine']:.2f}x; {r['sampling_time_over_affine']:.2f}x",
                shown,
            )
            figs.add(
                f"speed-up of the logistic_mixture model, {precision}, over normflows fp32 "
                "at the same width; with as many parameters: sampling",
                f"{r['sample_speedup_over_peer']:.2f}x; "
                f"**{r['sample_speedup_over_matched_peer']:.2f}x**",
                shown,
            )
    else:
        bench_note = (
            "\nThe speed ratios against normflows are measured by "
            "`python scripts/make_figures.py --bench`, which needs the `bench` extra; "
            "this page was generated without it.\n"
        )

    write_results(args.docs / "results.md", figs, args.steps, bench_note, started, measured_on)
    if args.readme is not None:
        write_readme(args.readme, figs, transcript, args.steps)
    guide = args.docs / "guide" / "training.md"
    if guide.exists():
        replace_block(guide, "transcript", "```console\n" + "\n".join(trained) + "\n```\n")
    print(f"wrote {args.docs / 'results.md'}, {args.readme} and the pictures in {img}")


def train_summary(stdout: str) -> list[str]:
    """The trainer's start-up line and its closing lines (from ``run folder:`` on)."""
    lines = stdout.splitlines()
    first = next(line for line in lines if line.startswith("training: "))
    last = next(i for i, line in enumerate(lines) if line.startswith("run folder: "))
    return [first, "...", *lines[last:]]


def replace_block(path: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    content = path.read_text()
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    if start not in content or end not in content:
        sys.exit(f"make_figures: {path} has no {start.strip()} ... {end} block")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(head + start + text + end + tail)


def write_readme(path: Path, figs: Figures, transcript: list[str], steps: int | None) -> None:
    """The README's quick-start transcript and its results table."""
    replace_block(path, "quickstart", "```console\n" + "\n".join(transcript) + "\n```\n")
    rows = [
        f"| {what} | {value} |"
        for what, value, _ in figs.rows
        if not what.startswith("the same model")
    ]
    smoke = f"\n(`--steps {steps}`: untrained models, not results.)\n" if steps else ""
    table = "| what | figure |\n|---|---|\n" + "\n".join(rows) + "\n" + smoke
    replace_block(path, "results", table)


def write_results(
    path: Path, figs: Figures, steps: int | None, note: str, started: float, measured_on: str
) -> None:
    smoke = (
        f"\n!!! warning\n    Generated with `--steps {steps}`: these are untrained models, "
        "not results.\n"
        if steps
        else ""
    )
    rows = "\n".join(f"| {what} | {value} | {cmd} |" for what, value, cmd in figs.rows)
    minutes = (time.perf_counter() - started) / 60
    path.write_text(
        f"""# Results

Every figure on this page was measured by one command,
`python scripts/make_figures.py` (`make figures`), on commit **{measured_on}**,
{dt.date.today().isoformat()}, on {machine()}; the whole script took {minutes:.0f} min.
Run it again after a change: it rewrites this page and the pictures of the guides.
Each row gives the command that produced the figure (`runs/docs/` is the script's
own work folder). Bits/dim are of 4-bit 8x8 digits; NLL of the 1-D Glow is in nats
per dimension of the data in its own units (lower is better for both).
{smoke}
| what | figure | command |
|---|---|---|
{rows}
{note}
The targets of the paper presets (MNIST, CIFAR-10, CelebA) need a GPU and are not
measured here; see [Configuration and presets](guide/configuration.md).
"""
        + GPU_FIGURES
    )


#: the GPU section of docs/results.md, kept as written (no GPU runs this script)
GPU_FIGURES = """
## GPU figures

No GPU has been measured yet: no GPU has been lent to this project so far. The first
session with one runs `python scripts/gpu_check.py` (one call, under 8 minutes) and
records its rows here with the commit and the card: images/s, GPU-busy fraction,
kernels per step, MFU and peak memory of the CIFAR-10 preset's step at batch 64,
256 and 512, eager and compiled; the steady-state step under CUDA's sync-debug mode;
CUDA against a float64 CPU reference on the same weights (TF32 off and on); bf16
against fp32 on the same weights; a one-rank NCCL DDP step.

On the CPU, the same script's `--dry-run` gives the step's FLOPs (24.1 GFLOP per
image, forward and backward, for the CIFAR-10 preset's model) and its kernels:
4,435 per fp32 step and 5,203 per bf16 step at batch 2 (6,162 in bf16 before the
conditioners cast their weights once per coupling).
"""


if __name__ == "__main__":
    main()
