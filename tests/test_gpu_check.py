"""scripts/gpu_check.py runs end to end on CPU with a tiny configuration."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_gpu_check_runs_on_cpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--runs", "fp32,bf16"]
        + ["--json", str(tmp_path / "rows.json"), "--data-root", str(tmp_path / "none")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "synthetic CIFAR-shaped images" in proc.stdout
    assert "| fp32 |" in proc.stdout and "| bf16 |" in proc.stdout
    import json

    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["run"] for r in rows] == ["fp32", "bf16"]
    assert all(r["skipped"] == 0 and r["loss_fell"] for r in rows)
    assert torch.isfinite(torch.tensor([r["test_bpd"] for r in rows])).all()


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
