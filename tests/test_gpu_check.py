"""scripts/gpu_check.py runs end to end on CPU with a tiny configuration."""

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
