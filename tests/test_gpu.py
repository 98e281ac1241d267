"""CUDA paths (run with `make test-all` on a machine with a GPU; skipped elsewhere)."""

import json
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
    """Every row of the GPU check runs on CUDA (tiny model): no sync in the steady-state
    step, fp32 / bf16 / fp16 and compiled steps without skipped steps."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--json", str(tmp_path / "rows.json")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["row"]: r for r in json.loads((tmp_path / "rows.json").read_text())}
    assert {"sync debug", "cuda vs cpu (tf32 off)", "ddp 1 rank"} <= set(rows)
    steps = [r for name, r in rows.items() if name.startswith("step ")]
    assert len(steps) == 7 and all(r["skipped"] == 0 for r in steps)


def test_sample_and_eval_on_cuda_match_cpu():
    from glow_train import Glow
    from glow_train.data import build_dataset, collate, dataset_config, describe_dataset
    from glow_train.evaluation.scoring import evaluate_objective
    from glow_train.likelihood.objective import build_objective

    torch.manual_seed(0)
    model = Glow(1, 8, K=2, L=2, hidden_channels=16, coupling="affine", lu=True)
    cfg = dataset_config("digits")
    test_set = build_dataset(cfg, "test")
    objective = build_objective(model, describe_dataset(cfg))
    objective.initialize(collate([test_set[i] for i in range(64)]), torch.Generator())
    cpu = evaluate_objective(objective, test_set, batch_size=64, seed=1, device="cpu")
    gpu = evaluate_objective(objective.cuda(), test_set, batch_size=64, seed=1, device="cuda")
    # different generators (CPU vs CUDA noise): equal in expectation, not bit for bit
    assert abs(cpu.value - gpu.value) < 0.02
    assert objective.sample(8, 0.7, torch.Generator("cuda").manual_seed(0)).is_cuda


def test_precision_auto_on_cuda_is_bf16_from_ampere_on():
    """auto: bf16 where the GPU computes it natively (compute capability 8.0 and later)."""
    from glow_train.runtime.precision import resolve_precision

    chosen = resolve_precision("auto", "cuda")
    native = torch.cuda.get_device_capability()[0] >= 8
    assert chosen.name == ("bf16" if native else "fp32")
    assert chosen.describe().endswith(f"(GPU {'has' if native else 'has no'} native bf16)")
