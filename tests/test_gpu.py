"""CUDA paths (run with `make test-all` on a machine with a GPU; skipped elsewhere)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_gpu_check_tiny_on_cuda(tmp_path):
    """fp32, bf16, fp16 (GradScaler) and bf16 + torch.compile train without skipped steps."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cuda"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for run in ("fp32", "bf16", "fp16", "bf16+compile"):
        assert f"| {run} |" in proc.stdout


def test_sample_and_eval_on_cuda_match_cpu():
    from glow_train import Glow
    from glow_train.data import build_dataset, dataset_config
    from glow_train.evaluate import evaluate_bpd

    torch.manual_seed(0)
    model = Glow(1, 8, K=2, L=2, hidden_channels=16)
    test_set = build_dataset(dataset_config("digits"), "test")
    images = torch.stack([test_set[i][0] for i in range(64)])
    from glow_train.likelihood import preprocess

    model.initialize(preprocess(images, 4, torch.Generator().manual_seed(0)))
    cpu = evaluate_bpd(model, test_set, n_bits=4, batch_size=64, seed=1, device="cpu")
    gpu = evaluate_bpd(model.cuda(), test_set, n_bits=4, batch_size=64, seed=1, device="cuda")
    # different generators (CPU vs CUDA noise): equal in expectation, not bit for bit
    assert abs(cpu.bpd - gpu.bpd) < 0.02
    assert model.sample(8, generator=torch.Generator("cuda").manual_seed(0)).is_cuda
