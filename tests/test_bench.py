"""scripts/bench.py: the trained-like couplings the mixture's sampling is timed on,
and a tiny run of the whole script without peers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import bench  # noqa: E402

from glow_train import Glow  # noqa: E402
from glow_train.flows.logistic_mixture import LogisticMixtureCoupling  # noqa: E402


def test_as_if_trained_gives_mixture_couplings_outputs_of_the_asked_size():
    torch.manual_seed(0)
    model = Glow(3, 8, 3, 2, 16, "logistic_mixture", True, mixture_components=3)
    model.initialize(torch.rand(8, 3, 8, 8) - 0.5)
    bench.as_if_trained(model, 16, 0.5)
    seen = []
    for coupling in model.modules():
        if isinstance(coupling, LogisticMixtureCoupling):
            original = coupling._raw

            def recording(x_a, original=original):
                raw = original(x_a)
                seen.append(raw)
                return raw

            coupling._raw = recording
    model.eval()
    with torch.no_grad():
        samples = model.sample(16, 0.7)
    assert torch.isfinite(samples).all()
    assert len(seen) == 6
    for raw in seen:  # (B, C, 2 + 3K, H, W): a, b and the log-scales zero, the rest moved
        assert raw[:, :, :2].abs().max() == 0 and raw[:, :, 2 + 6 :].abs().max() == 0
        assert 0.2 < raw[:, :, 2 : 2 + 6].std() < 1.0


def test_the_script_times_the_mixture_beside_the_affine_coupling(tmp_path):
    out = tmp_path / "bench.json"
    tiny = "--K 1 --L 1 --hidden 8 --size 8 --batch-size 4 --samples 4 --steps 1"
    cmd = [sys.executable, str(SCRIPTS / "bench.py"), *tiny.split(), "--warmup", "1"]
    cmd += ["--repeats", "1", "--mixture", "2", "--json", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    rows = {r["system"]: r for r in json.loads(out.read_text())["rows"]}
    mixture = rows["glow-train fp32 logistic_mixture"]
    assert mixture["sampling_time_over_affine"] > 0 and mixture["step_time_over_affine"] > 0
