"""precision=auto and the bf16 paths, on a CPU with native bf16 and on one without.

Whatever this machine's CPU is, :func:`without_native_bf16` runs the other branch: it
turns the capability flag (:data:`glow_train.flows.fused.CPU_NATIVE_BF16`) off and
replaces oneDNN's fused kernels with ones that refuse bfloat16 input as they do on a
CPU with AVX2 only, so a bf16 path that still reached them fails here too.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from helpers import perturb, run_console
from hydra import compose, initialize_config_module
from PIL import Image
from torch import nn

from glow_train.cli import eval_main, sample_main, train_main
from glow_train.errors import ConfigError
from glow_train.flows import fused
from glow_train.flows.conditioner import ConvConditioner, conv_conditioner
from glow_train.runtime.precision import FORCE_VARIABLE, resolve_precision
from glow_train.training import train

NATIVE = fused.CPU_NATIVE_BF16  # this machine's CPU, as the product sees it
CL = torch.channels_last
REFUSAL = "bf16 path needs the cpu support avx_ne_convert or avx512bw, avx512vl and avx512dq"
TINY = ["model.K=2", "model.hidden_channels=16", "train.time_limit=null", "train.progress=false"]
TINY += ["train.eval_every_steps=null", "train.sample_every=null", "train.num_samples=4"]


@pytest.fixture(autouse=True)
def auto_follows_the_cpu(monkeypatch):
    """These tests are about what `auto` chooses from the capability: without the
    variable `make test-fp32` sets (its own test sets it again)."""
    monkeypatch.delenv(FORCE_VARIABLE, raising=False)


@pytest.fixture
def without_native_bf16(monkeypatch):
    """A CPU without native bf16: the flag off, and oneDNN's fused kernels refusing bf16."""
    monkeypatch.setattr(fused, "CPU_NATIVE_BF16", False)
    for name in ("_convolution_pointwise", "_linear_pointwise"):
        real = getattr(torch.ops.mkldnn, name)

        def refuse_bf16(x, *args, real=real):
            if x.dtype == torch.bfloat16:
                raise RuntimeError(f"mkldnn_convolution: {REFUSAL}")
            return real(x, *args)

        monkeypatch.setattr(torch.ops.mkldnn, name, refuse_bf16)


@pytest.fixture(params=["native", "emulated"])
def branch(request) -> str:
    """Each test runs on both branches: native bf16 (where this CPU has it) and without."""
    if request.param == "native" and not NATIVE:
        pytest.skip("this CPU has no native bf16")
    if request.param == "emulated":
        request.getfixturevalue("without_native_bf16")
    return request.param


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny digits run (fp32), for glow-sample and glow-eval."""
    run_dir = tmp_path_factory.mktemp("run")
    overrides = [*TINY, "train.max_steps=20", "precision=fp32", f"run_dir={run_dir}"]
    with initialize_config_module("glow_train.configs", version_base="1.3"):
        train(compose("train", overrides))
    return run_dir


def test_auto_follows_the_capability(branch):
    native = branch == "native"
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == ("bf16" if native else "fp32")
    has = "has" if native else "has no"
    assert chosen.describe() == f"precision auto -> {chosen.name} (CPU {has} native bf16)"
    explicit = resolve_precision("bf16", "cpu")
    assert explicit.name == "bf16" and explicit.amp_dtype == torch.bfloat16
    note = explicit.describe()
    assert ("slower than fp32" in note) != native and "\n" not in note
    assert resolve_precision("fp32", "cpu").describe() == "precision fp32"
    with pytest.raises(ConfigError, match="precision=fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="precision=fp8 is not one of auto, fp32, bf16"):
        resolve_precision("fp8", "cpu", ("fp32", "bf16"))


def test_bf16_inference_without_native_bf16_runs_the_plain_layers(without_native_bf16):
    """Eval mode, no gradient, bf16 autocast: the conditioner's layers one by one (bit for
    bit), never the fused kernels; float32 inference keeps its fused kernels."""
    torch.manual_seed(0)
    net = perturb(conv_conditioner(6, 32, 12), scale=0.2).to(memory_format=CL).eval()
    x = torch.randn(4, 6, 8, 8).contiguous(memory_format=CL)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = ConvConditioner.forward(net, x)
        assert fast.dtype == torch.bfloat16
        assert torch.equal(fast, nn.Sequential.forward(net, x))
    if fused.ONEDNN_KERNELS:
        with torch.no_grad():
            assert net._inference_dtype(x) == torch.float32  # float32 keeps its fused kernels
            xb, wb, bb = x.bfloat16(), net[0].weight.bfloat16(), net[0].bias.bfloat16()
            # the stand-in kernel refuses bf16: this passes only through the plain ops
            plain = torch.relu(F.conv2d(xb, wb, bb, padding=1))
            torch.testing.assert_close(fused.conv3x3_relu(xb, wb, bb), plain)
            with pytest.raises(RuntimeError, match="bf16 path needs"):
                torch.ops.mkldnn._convolution_pointwise(
                    xb, wb, bb, [1, 1], [1, 1], [1, 1], 1, "relu", [], ""
                )


def test_glow_sample_bf16_and_auto_write_their_grids(branch, digits_run, tmp_path):
    """``glow-sample ckpt=<digits run> precision=bf16`` writes its grid, and says on stderr
    which precision ran (with a note where bf16 is emulated); auto likewise."""
    native = branch == "native"
    for precision, expected in (("bf16", "precision bf16"), ("auto", "precision auto -> ")):
        out = tmp_path / f"{precision}.png"
        args = [f"ckpt={digits_run}", f"precision={precision}", "n=16", f"out={out}"]
        status, stdout, stderr = run_console(sample_main, args, tmp_path)
        assert status == 0, stderr
        assert stdout.split() == [str(out)] and Image.open(out).size == (42, 42)
        line = next(x for x in stderr.splitlines() if x.startswith("glow-sample: precision"))
        assert line.startswith(f"glow-sample: {expected}")
        if precision == "auto":
            chosen = "bf16 (CPU has native bf16)" if native else "fp32 (CPU has no native bf16)"
            assert line.endswith(f"-> {chosen}")
        else:
            assert ("slower than fp32" in line) != native


def test_glow_train_start_up_line_shows_the_precision_auto_chose(branch, tmp_path):
    native = branch == "native"
    args = [*TINY, "train.max_steps=2", f"run_dir={tmp_path / 'run'}"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    start = out.splitlines()[0]
    assert start.startswith("training: digits, preset digits (")
    chosen = "bf16 (CPU has native bf16)" if native else "fp32 (CPU has no native bf16)"
    assert f"precision auto -> {chosen}" in start
    status, out, err = run_console(
        train_main, [*args[:-1], "precision=bf16", f"run_dir={tmp_path / 'bf16'}"], tmp_path
    )
    assert status == 0, err
    assert ("slower than fp32" in out.splitlines()[0]) != native


def test_the_variable_forces_auto_to_fp32_and_leaves_explicit_bf16(monkeypatch, tmp_path):
    """`GLOW_TRAIN_AUTO_PRECISION=fp32` (`make test-fp32`): auto runs float32 on this CPU
    whatever it has, the start-up line says why; precision=bf16 still runs bf16; any
    other value is one line and exit status 2, nothing written."""
    monkeypatch.setenv(FORCE_VARIABLE, "fp32")
    chosen = resolve_precision("auto", "cpu")
    assert chosen.name == "fp32" and chosen.amp_dtype is None
    assert chosen.describe() == "precision auto -> fp32 (GLOW_TRAIN_AUTO_PRECISION=fp32)"
    assert resolve_precision("bf16", "cpu").name == "bf16"
    args = [*TINY, "train.max_steps=1", f"run_dir={tmp_path / 'run'}"]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    assert "precision auto -> fp32 (GLOW_TRAIN_AUTO_PRECISION=fp32)" in out.splitlines()[0]
    monkeypatch.setenv(FORCE_VARIABLE, "fp16")
    args[-1] = f"run_dir={tmp_path / 'other'}"
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 2 and err.strip() == (
        "glow-train: error: GLOW_TRAIN_AUTO_PRECISION=fp16 is not fp32; unset it to let "
        "precision=auto choose"
    )
    assert not (tmp_path / "other").exists()


def test_glow_eval_is_fp32_by_default_and_takes_precision(digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    figures = {}
    for precision in ("fp32", "bf16"):
        args = [f"ckpt={run}", "progress=false", f"out={tmp_path / precision}.json"]
        args += [] if precision == "fp32" else [f"precision={precision}"]
        status, out, err = run_console(eval_main, args, tmp_path)
        assert status == 0, err
        summary = json.loads((tmp_path / f"{precision}.json").read_text())
        assert summary["precision"] == precision
        assert ("glow-eval: precision bf16" in err) == (precision == "bf16")
        figures[precision] = summary["bpd"]
    assert figures["fp32"] != figures["bf16"] and abs(figures["fp32"] - figures["bf16"]) < 0.05
