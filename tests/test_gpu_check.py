"""scripts/gpu_check.py runs end to end on CPU with a tiny configuration."""

import json
import subprocess
import sys
from pathlib import Path

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


def test_bench_runs_on_cpu(tmp_path):
    """The benchmark script runs end to end (tiny sizes; figures are not asserted)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
    out = tmp_path / "bench.json"
    args = ["--K", "1", "--L", "2", "--hidden", "8", "--size", "8", "--batch-size", "4"]
    args += ["--samples", "4", "--steps", "1", "--warmup", "1", "--repeats", "1"]
    proc = subprocess.run(
        [sys.executable, str(script), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["system"] for r in rows] == [
        "glow-train fp32",
        "glow-train bf16",
        "glow-train fp32 memory-saving",
    ]
    assert all(r["train_images_per_s"] > 0 and r["sample_images_per_s"] > 0 for r in rows)
