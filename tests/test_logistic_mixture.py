"""The Flow++ parts (`model.coupling=logistic_mixture`, `model.conditioner=resnet|attention`,
`experiment=cifar10_flowpp`): closed-form values, inverses, log-determinants against the
brute-force Jacobian, the identity at initialisation, bf16, save/load and tiny runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import brute_force_logdet, perturb, run_console
from test_data import cifar_root, existence_only  # noqa: F401
from test_precision import without_native_bf16  # noqa: F401

from glow_train.cli import sample_main, train_main
from glow_train.flows import fused
from glow_train.flows.conv_attention import ConvAttentionConditioner, image_conditioner
from glow_train.flows.logistic_mixture import (
    LogisticMixtureCoupling,
    mixture_forward,
    mixture_inverse,
    mixture_parameters,
)
from glow_train.likelihood.loading import load_model
from glow_train.models import Glow
from glow_train.runtime.precision import FORCE_VARIABLE

CL = torch.channels_last
TINY = ["model.K=2", "model.hidden_channels=16", "train.time_limit=null", "train.progress=false"]
TINY += ["train.eval_every_steps=null", "train.sample_every=null", "train.num_samples=4"]
TINY += ["model.coupling=logistic_mixture", "model.mixture_components=4"]


def _raw(a, b, logits, means, log_scales) -> torch.Tensor:
    """The conditioner output of one value (`a` before its tanh bound)."""
    return torch.tensor([a, b, *logits, *means, *log_scales], dtype=torch.float64)


# ------------------------------------------------------------------- the transform


def test_one_component_is_an_affine_map_in_closed_form():
    """K=1: logit(sigmoid((x - mu) / s)) = (x - mu) / s, so y is affine in x."""
    raw_a, b, mu, log_s = 0.7, -0.3, 1.5, math.log(0.4)
    a = 2 * math.tanh(raw_a / 2)
    x = torch.linspace(-6, 6, 25, dtype=torch.float64)
    raw = _raw(raw_a, b, [0.0], [mu], [log_s]).expand(25, -1)
    y, log_dy = mixture_forward(x, raw)
    torch.testing.assert_close(y, math.exp(a) * (x - mu) / 0.4 + b)
    torch.testing.assert_close(log_dy, torch.full_like(x, a - log_s))


def test_two_components_match_the_mixture_cdf_computed_independently():
    logits, means, log_scales = [0.3, -0.4], [-1.0, 2.0], [math.log(0.5), math.log(1.5)]
    raw_a, b = -0.5, 0.25
    x = np.linspace(-5, 5, 41)
    w = np.exp(logits) / np.exp(logits).sum()
    s = np.exp(log_scales)
    u = (x[:, None] - np.array(means)) / s
    cdf = (w / (1 + np.exp(-u))).sum(1)
    pdf = (w * np.exp(-u) / (s * (1 + np.exp(-u)) ** 2)).sum(1)
    a = 2 * np.tanh(raw_a / 2)
    expected_y = np.exp(a) * np.log(cdf / (1 - cdf)) + b
    expected_log_dy = a + np.log(pdf / (cdf * (1 - cdf)))
    raw = _raw(raw_a, b, logits, means, log_scales).expand(41, -1)
    y, log_dy = mixture_forward(torch.from_numpy(x), raw)
    np.testing.assert_allclose(y.numpy(), expected_y, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(log_dy.numpy(), expected_log_dy, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_the_bracketed_newton_inverse_inverts_the_transform_to_its_tolerance(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    k = 6
    raw = torch.randn(2000, mixture_parameters(k), generator=gen, dtype=dtype)
    raw[:, 2 + 2 * k :] *= 0.3  # log-scales within a factor e of 1
    x = 4 * torch.randn(2000, generator=gen, dtype=dtype)
    x[:4] = torch.tensor([-30.0, -12.0, 12.0, 30.0], dtype=dtype)  # deep in the tails
    y, _ = mixture_forward(x, raw)
    assert torch.isfinite(y).all()
    x_again = mixture_inverse(y, raw)
    assert x_again.dtype == dtype
    torch.testing.assert_close(x_again, x, rtol=tol, atol=tol)


def test_the_inverse_does_not_cycle_on_widely_spread_mixtures():
    """Newton on the logit of a mixture CDF can jump between two points, each the
    other's tangent root, both inside the bracket; the inverse must still converge
    for every value (before the step-length rule, two of these 20,000 did not)."""
    gen = torch.Generator().manual_seed(0)
    k = 4
    raw = 1.5 * torch.randn(20000, mixture_parameters(k), generator=gen, dtype=torch.float64)
    x = 2 * torch.randn(20000, generator=gen, dtype=torch.float64)
    y, _ = mixture_forward(x, raw)
    torch.testing.assert_close(mixture_inverse(y, raw), x, rtol=1e-6, atol=1e-6)


def test_the_inverse_reads_the_parameters_on_any_dimension():
    gen = torch.Generator().manual_seed(3)
    raw = torch.randn(2, 3, mixture_parameters(5), 4, 4, generator=gen)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    y, log_dy = mixture_forward(x, raw, dim=2)
    y_last, log_dy_last = mixture_forward(x, raw.movedim(2, -1))
    torch.testing.assert_close(y, y_last)
    torch.testing.assert_close(log_dy, log_dy_last)
    torch.testing.assert_close(mixture_inverse(y, raw, dim=2), x, rtol=2e-4, atol=2e-4)


# ---------------------------------------------------------------------- the coupling


@pytest.mark.parametrize("kind", ["conv", "resnet", "attention"])
def test_the_coupling_starts_as_the_identity_and_its_components_separate(kind):
    torch.manual_seed(0)
    coupling = LogisticMixtureCoupling(6, 16, 5, conditioner={"kind": kind, "blocks": 1})
    x = torch.randn(4, 6, 4, 4)
    z, logdet = coupling(x)
    torch.testing.assert_close(z, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(logdet, torch.zeros(4), rtol=0, atol=1e-4)
    # one optimiser step: the components' means must no longer be equal
    opt = torch.optim.Adam(coupling.parameters(), lr=1e-2)
    (-logdet.sum() + (z**2).sum()).backward()
    opt.step()
    means = coupling._raw(x[:, :3])[:, :, 2 + 5 : 2 + 10]
    assert (means.std(dim=2) > 1e-4).all()


@pytest.mark.parametrize("kind", ["conv", "resnet", "attention"])
def test_coupling_log_determinant_matches_the_brute_force_jacobian(kind):
    torch.manual_seed(1)
    conditioner = {"kind": kind, "blocks": 1, "heads": 2}
    coupling = perturb(LogisticMixtureCoupling(4, 8, 3, conditioner=conditioner), 0.2).double()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    _, logdet = coupling(x)
    torch.testing.assert_close(logdet, brute_force_logdet(lambda v: coupling(v)[0], x))
    torch.testing.assert_close(coupling.inverse(coupling(x)[0]), x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("coupling, conditioner", [("logistic_mixture", "attention")] * 1
                         + [("affine", "resnet"), ("logistic_mixture", "conv")])  # fmt: skip
def test_glow_with_the_new_parts_round_trips_and_has_the_brute_force_log_det(coupling, conditioner):
    torch.manual_seed(2)
    model = Glow(1, 4, K=2, L=1, hidden_channels=8, coupling=coupling, lu=True,
                 conditioner=conditioner, conditioner_blocks=1, attention_heads=2,
                 mixture_components=3)  # fmt: skip
    model = perturb(model, 0.1).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64) - 0.5
    model.encode(x)  # ActNorm takes its statistics from the first batch
    latents, logdet = model.encode(x)
    torch.testing.assert_close(model.decode(latents), x, rtol=1e-8, atol=1e-8)
    brute = brute_force_logdet(
        lambda v: torch.cat([z.flatten(1) for z in model.encode(v)[0]], 1), x
    )
    torch.testing.assert_close(logdet, brute)


def test_bf16_autocast_keeps_float32_log_determinants():
    torch.manual_seed(3)
    coupling = perturb(LogisticMixtureCoupling(4, 16, 4), 0.1).to(memory_format=CL)
    x = torch.randn(8, 4, 8, 8).contiguous(memory_format=CL)
    z32, ld32 = coupling(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z16, ld16 = coupling(x)
        x_again = coupling.inverse(z16)
    assert ld16.dtype == torch.float32 and z16.dtype == torch.float32
    torch.testing.assert_close(ld16, ld32, rtol=0.05, atol=0.05 * ld32.abs().mean().item())
    torch.testing.assert_close(z16, z32, rtol=0.05, atol=0.05)
    # the same conditioner output on the way back: the inverse recovers x closely
    torch.testing.assert_close(x_again, x, rtol=0.05, atol=0.05)


def test_options_are_validated_in_one_line():
    with pytest.raises(ValueError, match="mixture_components must be in 1..256"):
        LogisticMixtureCoupling(4, 8, 0)
    with pytest.raises(ValueError, match="attention_heads=3 must divide hidden_channels=8"):
        image_conditioner(2, 8, 4, kind="attention", heads=3)
    with pytest.raises(ValueError, match="unknown conditioner 'mlp'; choose one of conv"):
        image_conditioner(2, 8, 4, kind="mlp")
    with pytest.raises(ValueError, match="conditioner_blocks must be at least 1"):
        ConvAttentionConditioner(2, 8, 4, blocks=0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.mixture_components=0", "model: mixture_components must be at least 1, got 0"),
        ("model.conditioner=mlp", "model: unknown conditioner 'mlp'; choose one of conv, "),
        ("model.attention_heads=5", "model: attention_heads=5 must divide hidden_channels=16"),
        ("model.conditioner_blocks=0", "model: conditioner_blocks must be at least 1, got 0"),
    ],
)
def test_bad_values_are_refused_in_one_line_on_the_command_line(override, message, tmp_path):
    args = [*TINY, "model.conditioner=attention", override, "train.max_steps=1"]
    status, _, err = run_console(train_main, args, tmp_path)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["model.coupling=affine", "model.mixture_components=8"],
         "model.mixture_components=8 does nothing here: only model.coupling=logistic_mixture "
         "uses it, and this run's model.coupling is affine; add model.coupling=logistic_mixture "
         "or leave model.mixture_components= out"),
        (["model.attention_heads=2"], "only model.conditioner=attention uses it, and this "
         "run's model.conditioner is conv"),
        (["model.conditioner=resnet", "model.attention_heads=2"], "this run's "
         "model.conditioner is resnet; add model.conditioner=attention"),
        (["model.conditioner_blocks=3"], "model.conditioner_blocks=3 does nothing here: only "
         "model.conditioner=resnet or attention uses it"),
    ],
)  # fmt: skip
def test_options_the_chosen_coupling_or_conditioner_does_not_use_are_refused(
    args, message, tmp_path
):
    """Typed on the command line, that is: a preset may set them for its own coupling."""
    status, _, err = run_console(train_main, [*TINY, *args, "train.max_steps=1"], tmp_path)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err, err
    assert not (tmp_path / "runs").exists()


def test_the_vector_glow_refuses_the_image_options(tmp_path):
    csv = tmp_path / "t.csv"
    np.savetxt(csv, np.random.default_rng(0).normal(size=(64, 3)), delimiter=",")
    base = ["dataset=csv", f"dataset.path={csv}", "train.max_steps=1", "train.progress=false"]
    for extra, message in (
        ("model.coupling=logistic_mixture", "coupling=logistic_mixture is for images (model=glow)"),
        ("+model.conditioner=attention", "conditioner"),
    ):
        status, _, err = run_console(train_main, [*base, extra], tmp_path)
        assert status == 2 and len(err.strip().splitlines()) == 1, err
        assert message in err, err


# ---------------------------------------------------------------- runs and checkpoints


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory):
    """A tiny digits run with the new coupling and the attention conditioner (fp32)."""
    tmp = tmp_path_factory.mktemp("flowpp")
    args = [*TINY, "model.conditioner=attention", "model.conditioner_blocks=1",
            "train.max_steps=6", "precision=fp32", f"run_dir={tmp / 'run'}"]  # fmt: skip
    status, out, err = run_console(train_main, args, tmp)
    assert status == 0, err
    return tmp / "run", out


def test_a_tiny_run_trains_saves_loads_and_samples(mixture_run, tmp_path):
    run_dir, out = mixture_run
    assert "test bpd:" in out
    model, _ = load_model(run_dir / "last.pt")
    assert isinstance(model.levels[0].flows[0].flows[2], LogisticMixtureCoupling)
    assert (model.config["coupling"], model.config["conditioner"]) == (
        "logistic_mixture", "attention"
    )  # fmt: skip
    model.eval()
    x = torch.rand(5, 1, 8, 8) - 0.5
    with torch.no_grad():
        latents, _ = model.encode(x)
        torch.testing.assert_close(model.decode(latents), x, rtol=1e-4, atol=1e-4)
        again, _ = load_model(run_dir / "last.pt")
        torch.testing.assert_close(again.eval().log_prob(x), model.log_prob(x))
    grid = tmp_path / "grid.png"
    args = [f"ckpt={run_dir / 'last.pt'}", "n=4", f"out={grid}", "precision=fp32"]
    status, _, err = run_console(sample_main, args, tmp_path)
    assert status == 0 and grid.exists(), err


def test_a_cpu_without_native_bf16_trains_in_fp32(without_native_bf16, monkeypatch, tmp_path):  # noqa: F811
    """The forced fallback: precision=auto resolves to fp32 and the run trains."""
    monkeypatch.delenv(FORCE_VARIABLE, raising=False)
    assert not fused.CPU_NATIVE_BF16
    args = [*TINY, "model.conditioner=resnet", "model.conditioner_blocks=1", "train.max_steps=2",
            f"run_dir={tmp_path / 'run'}"]  # fmt: skip
    status, out, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    assert "precision auto -> fp32 (CPU has no native bf16)" in out
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert np.isfinite(state["last_val_score"])


# ------------------------------------------------------------------ the Flow++ preset


def test_the_flowpp_preset_composes(tmp_path):
    status, out, err = run_console(
        train_main, ["experiment=cifar10_flowpp", "--cfg", "job"], tmp_path
    )
    assert status == 0, err
    expected = ["coupling: logistic_mixture", "mixture_components: 32", "conditioner: attention"]
    expected += ["conditioner_blocks: 10", "hidden_channels: 96", "dropout: 0.2"]
    expected += ["dequantization: variational", "preset: cifar10_flowpp", "name: cifar10"]
    expected += ["lr: 0.0003", "warmup_steps: 2000", "cosine_decay: false", "grad_clip: 1\n"]
    expected += ["init_samples: 128", "batch_size: 64", "ema_decay: 0.999"]
    for line in expected:
        assert line in out, line


def test_the_flowpp_preset_trains_on_cifar10_batches(tmp_path, cifar_root, monkeypatch):  # noqa: F811
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", existence_only)
    root, _ = cifar_root
    run_dir = tmp_path / "run"
    args = ["experiment=cifar10_flowpp", f"dataset.root={root}", "dataset.val_size=2",
            "model.K=1", "model.hidden_channels=8", "model.conditioner_blocks=1",
            "model.attention_heads=2", "model.mixture_components=4", "train.max_steps=2",
            "train.progress=false", "dataset.batch_size=2", "dataset.num_workers=0",
            "train.init_samples=2", "train.eval_every_steps=2", "train.num_samples=4",
            "dataset.eval_batch_size=2", f"run_dir={run_dir}"]  # fmt: skip
    status, _, err = run_console(train_main, args, tmp_path)
    assert status == 0, err
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["step"] == 2 and np.isfinite(state["last_val_score"])
    assert state["config"]["model"]["coupling"] == "logistic_mixture"
    assert state["config"]["dataset"]["image_size"] == 32
