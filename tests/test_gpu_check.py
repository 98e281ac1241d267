"""scripts/gpu_check.py (its CPU rows and plan) and scripts/bench.py run on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_gpu_check_dry_run_runs_the_cpu_rows_and_plans_the_rest(tmp_path):
    """`--dry-run`: every row that needs no CUDA runs on the CPU, each written to the JSON
    file as it comes; the CUDA rows are listed as planned, compile rows last."""
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--tiny", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["row"]: r for r in json.loads(out.read_text())}
    assert list(rows) == ["environment", "flops", "kernels fp32", "kernels bf16", "bf16 vs fp32"]
    assert rows["flops"]["per_image_gflop"] > 0
    assert 0 < rows["kernels fp32"]["per_step"] < rows["kernels bf16"]["per_step"]
    assert 0 <= rows["bf16 vs fp32"]["max_abs_bpd"] < 0.05
    planned = [line.split(": ", 1)[1] for line in proc.stdout.splitlines() if "planned" in line]
    assert planned[:2] == ["sync debug", "cuda vs cpu"]
    assert planned[planned.index("ddp 1 rank") - 1] == "step flowpp bf16 eager batch 4"
    assert "ddp 1 rank" in planned and planned[-1] == "step bf16 compiled batch 8"
    assert all("compiled" in name for name in planned[planned.index("ddp 1 rank") + 1 :])


BENCH_TINY = ["--K", "1", "--L", "2", "--hidden", "8", "--size", "8", "--batch-size", "4"]
BENCH_TINY += ["--samples", "4", "--steps", "1", "--warmup", "1", "--repeats", "2"]


def run_bench(*extra: str) -> subprocess.CompletedProcess:
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
    proc = subprocess.run(
        [sys.executable, str(script), *BENCH_TINY, *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_bench_runs_on_cpu(tmp_path):
    """The benchmark script runs end to end (tiny sizes; figures are not asserted)."""
    out = tmp_path / "bench.json"
    run_bench("--json", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [r["system"] for r in rows] == [
        "glow-train fp32",
        "glow-train bf16",
        "glow-train fp32 memory-saving",
    ]
    assert all(r["train_images_per_s"] > 0 and r["sample_images_per_s"] > 0 for r in rows)


def test_bench_times_the_conditioners_alone():
    lines = run_bench("--conditioners").stdout.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "conditioners alone",
        "conditioners alone",
    ]
    assert "train (batch 4)" in lines[0] and "sample (batch 4)" in lines[1]


def test_bench_times_the_mixture_coupling_beside_the_affine_one(tmp_path):
    out = tmp_path / "bench.json"
    lines = run_bench("--mixture", "3", "--json", str(out)).stdout.splitlines()
    rows = {r["system"]: r for r in json.loads(out.read_text())["rows"]}
    for precision in ("fp32", "bf16"):
        row = rows[f"glow-train {precision} logistic_mixture"]
        assert row["step_time_over_affine"] > 0 and row["sampling_time_over_affine"] > 0
        assert any(line.startswith(f"logistic_mixture (K=3) / affine time, {precision}: step ")
                   for line in lines)  # fmt: skip


def test_bench_pairs_the_peer_within_each_block(tmp_path):
    pytest.importorskip("normflows")  # the bench extra; not installed by make test
    out = tmp_path / "bench.json"
    run_bench("--peers", "--json", str(out))
    rows = {r["system"]: r for r in json.loads(out.read_text())["rows"]}
    fp32 = rows["glow-train fp32"]
    assert fp32["train_speedup_over_peer"] > 0
    low, high = fp32["train_speedup_range"]
    assert low <= fp32["train_speedup_over_peer"] <= high
    assert "train_speedup_over_peer" not in rows["normflows fp32"]
