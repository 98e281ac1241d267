"""Every fast path computes what the plain one does: values, log-dets, gradients, inverses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import brute_force_logdet, perturb
from torch import nn

from glow_train import Glow
from glow_train.flows import FlowSequence, FlowStep, FlowSteps
from glow_train.flows.base import deinterleave, split_channels
from glow_train.flows.conditioner import ConvConditioner, conv_conditioner
from glow_train.flows.fused import CPU_NATIVE_BF16, conv3x3_relu, fused_available, linear_relu

CL = torch.channels_last
#: the fused bf16 kernels need a CPU with native bf16 (elsewhere the plain layers run:
#: tests/test_precision.py runs that branch on every machine)
NEEDS_NATIVE_BF16 = pytest.mark.skipif(not CPU_NATIVE_BF16, reason="this CPU has no native bf16")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` over the whole tensor (elementwise checks fail on the few entries
    that rounding moves across a ReLU's kink)."""
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.skipif(not fused_available(torch.empty(0)), reason="no oneDNN kernels in this build")
@pytest.mark.parametrize(
    "dtype", [torch.float32, pytest.param(torch.bfloat16, marks=NEEDS_NATIVE_BF16)]
)
def test_fused_kernels_compute_conv_or_linear_then_relu(dtype):
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    x, w, b = randn(2, 3, 5, 4).contiguous(memory_format=CL), randn(6, 3, 3, 3), randn(6)
    y = conv3x3_relu(x, w, b)
    assert y.is_contiguous(memory_format=CL) and (y == 0).any() and (y > 0).any()
    torch.testing.assert_close(y, torch.relu(F.conv2d(x, w, b, padding=1)))
    h, w, b = randn(2, 6, 3, 4).contiguous(memory_format=CL), randn(5, 6), randn(5)
    torch.testing.assert_close(linear_relu(h, w, b), torch.relu(F.conv2d(h, w[..., None, None], b)))


def test_conv_conditioner_runs_its_layers_when_training_or_with_gradients():
    """Training mode (dropout), gradients, float64: the plain layers, bit for bit."""
    torch.manual_seed(0)
    net = perturb(conv_conditioner(6, 32, 12, dropout=0.2), scale=0.2).to(memory_format=CL)
    x = torch.randn(4, 6, 8, 8).contiguous(memory_format=CL)
    cases = ((True, True, True, x), (True, False, True, x), (False, True, False, x))
    for mode, grad, autocast, inp in (*cases, (False, False, False, x.double())):
        net = net.double() if inp.dtype == torch.float64 else net
        net.train(mode)
        with torch.set_grad_enabled(grad), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            torch.manual_seed(5)
            fast = ConvConditioner.forward(net, inp)
            torch.manual_seed(5)
            assert torch.equal(fast, nn.Sequential.forward(net, inp))


@pytest.mark.skipif(not fused_available(torch.empty(0)), reason="no oneDNN kernels in this build")
@pytest.mark.parametrize(
    ("autocast", "tolerance"), [(False, 1e-5), pytest.param(True, 0.02, marks=NEEDS_NATIVE_BF16)]
)
def test_conv_conditioner_fused_in_inference_matches_its_layers(autocast, tolerance):
    """Eval mode without gradients, float32 or bfloat16 autocast: the fused kernels, equal
    to the layers up to rounding (against float64 layers)."""
    torch.manual_seed(0)
    net = perturb(conv_conditioner(6, 32, 12), scale=0.2).to(memory_format=CL).eval()
    x = torch.randn(4, 12, 8, 8).contiguous(memory_format=CL)[:, :6]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fast, plain = ConvConditioner.forward(net, x), nn.Sequential.forward(net, x)
    exact = nn.Sequential.forward(net.double(), x.double()).detach()
    assert fast.dtype == plain.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert not torch.equal(fast, plain)  # the fused path ran (its rounding differs)
    assert relative_error(fast.double(), exact) < tolerance
    assert relative_error(plain.double(), exact) < tolerance
    assert set(net.state_dict()) == {
        "0.weight", "0.bias", "2.weight", "2.bias", "4.log_scale", "4.layer.weight",
        "4.layer.bias",
    }  # fmt: skip


def assert_same_function_float64(flow: nn.Module, reference, x: torch.Tensor) -> torch.Tensor:
    """``flow(x)`` against ``reference(x)`` (each ``(z, logdet)``, float64): values and
    log-dets to 1e-12, and the gradients (to ``x`` and every parameter of ``flow``) of a
    loss weighting ``z`` elementwise and each sample's log-det differently, to 1e-10.
    Returns ``z``."""
    (z, logdet), (z_ref, logdet_ref) = flow(x), reference(x)
    torch.testing.assert_close(z, z_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logdet, logdet_ref, rtol=1e-12, atol=1e-12)
    params = [x, *flow.parameters()]
    weights = torch.randn(z.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    per_sample = torch.arange(1.0, x.shape[0] + 1, dtype=torch.float64)

    def loss(z, logdet):
        return (z * weights).sum() + (logdet * per_sample).sum()

    fast = torch.autograd.grad(loss(z, logdet), params)
    plain = torch.autograd.grad(loss(z_ref, logdet_ref), params)
    for a, b in zip(fast, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    return z


@pytest.mark.parametrize(
    ("shape", "dense", "layout"),
    [
        ((3, 6, 4, 4), False, CL),
        ((3, 6, 4, 4), False, torch.contiguous_format),
        ((5, 7), True, None),
    ],
)
def test_flowstep_folds_actnorm_into_the_1x1_conv_exactly(shape, dense, layout):
    """ActNorm + 1×1 conv as one matrix product: the layer-by-layer result in float64."""
    torch.manual_seed(0)
    step = perturb(FlowStep(shape[1], 8, "affine", lu=True, dense=dense).double(), scale=0.3)
    x = torch.randn(shape, dtype=torch.float64)
    if layout is not None:
        step, x = step.to(memory_format=layout), x.contiguous(memory_format=layout)
    x.requires_grad_()
    z = assert_same_function_float64(step, lambda v: FlowSequence.forward_plain(step, v), x)
    step.eval()
    torch.testing.assert_close(step.inverse(z), FlowSequence.inverse(step, z), rtol=0, atol=1e-12)


@pytest.mark.parametrize("lu", [True, False])
@pytest.mark.parametrize(("shape", "dense"), [((3, 6, 4, 4), False), ((5, 7), True)])
def test_flowsteps_build_their_matrices_together_exactly(shape, dense, lu):
    """K steps with their folded matrices and log-dets built in one batch: the values,
    log-dets and gradients of running the steps one by one (float64)."""
    torch.manual_seed(0)
    steps = FlowSteps(FlowStep(shape[1], 8, "affine", lu=lu, dense=dense) for _ in range(3))
    steps = perturb(steps.double(), scale=0.3)
    x = torch.randn(shape, dtype=torch.float64)
    if not dense:
        steps, x = steps.to(memory_format=CL), x.contiguous(memory_format=CL)
    x.requires_grad_()
    assert steps._batchable()  # the batched path runs, not the fallback
    assert_same_function_float64(steps, lambda v: FlowSequence.forward_plain(steps, v), x)
    if dense:  # and the log-det is that of the Jacobian
        torch.testing.assert_close(steps(x)[1], brute_force_logdet(lambda v: steps(v)[0], x))
    assert set(steps.state_dict()) == set(FlowSequence(list(steps)).state_dict())
    with pytest.raises(TypeError, match="FlowStep layers only"):
        FlowSteps([nn.Identity()])


def test_flowsteps_run_step_by_step_where_batching_would_skip_something():
    """Hooks on a step, a replaced step, one step: the steps are called one by one."""
    torch.manual_seed(0)
    steps = FlowSteps(FlowStep(6, 8, "affine", lu=True) for _ in range(3)).to(memory_format=CL)
    x = torch.randn(2, 6, 4, 4).contiguous(memory_format=CL)
    assert steps._batchable()
    calls = []
    handle = steps.flows[1].register_forward_hook(lambda *_: calls.append(1))
    assert not steps._batchable()
    steps(x)
    assert calls == [1]
    handle.remove()
    steps.flows[2] = FlowSequence([FlowStep(6, 8, "affine", lu=True)])
    assert not steps._batchable()
    z, logdet = steps(x)
    torch.testing.assert_close(steps.inverse(z), x, rtol=1e-4, atol=1e-4)
    assert not FlowSteps([FlowStep(6, 8, "affine", lu=True)])._batchable()


def test_whole_model_fast_paths_match_layer_by_layer_float32(monkeypatch):
    """A Glow with ActNorm folded into each 1×1 conv against the same weights run layer
    by layer: log-likelihood, gradients and samples."""
    torch.manual_seed(0)
    model = Glow(3, 16, 2, 2, 16, "affine", True)
    x = torch.rand(4, 3, 16, 16) - 0.5
    model.initialize(x)
    perturb(model, scale=0.05)
    results = []
    for plain in (False, True):
        if plain:
            monkeypatch.setattr(FlowSteps, "forward_plain", FlowSequence.forward_plain)
            monkeypatch.setattr(FlowStep, "forward_plain", FlowSequence.forward_plain)
            monkeypatch.setattr(FlowStep, "inverse", FlowSequence.inverse)
        log_prob = model.log_prob(x)
        grads = torch.autograd.grad(log_prob.sum(), list(model.parameters()))
        model.eval()
        sample = model.sample(4, 0.7, torch.Generator().manual_seed(3))
        model.train()
        results.append((log_prob, grads, sample))
    (lp, grads, sample), (lp_ref, grads_ref, sample_ref) = results
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-3)
    for a, b in zip(grads, grads_ref, strict=True):
        assert relative_error(a, b) < 1e-4
    torch.testing.assert_close(sample, sample_ref, rtol=1e-4, atol=1e-4)


def test_folded_layers_follow_copies_and_stay_out_of_the_state_dict():
    """The EMA deep-copies the model: each copy's fold must run the copy's own layers."""
    import copy

    model = Glow(3, 8, 2, 2, 8, "affine", True)
    twin = copy.deepcopy(model)
    for original, copied in zip(model.modules(), twin.modules(), strict=True):
        if isinstance(copied, FlowStep):
            fold = copied.units()[0]
            assert fold.norm is copied.flows[0] and fold.mix is copied.flows[1]
            assert fold.norm is not original.flows[0]
    assert not any("norm_then_mix" in key for key in model.state_dict())


def test_fold_keeps_float32_precision_when_the_actnorm_bias_is_large():
    """Raw, unstandardised vectors: ActNorm's bias cancels a large offset. Added before
    the product (not folded into it as W'b) it loses no more than the layers do."""
    torch.manual_seed(0)
    step = FlowStep(6, 16, "affine", lu=True, dense=True)
    x = 0.01 * torch.randn(64, 6) + 1e3
    step.flows[0].initialize_from(x)
    exact = FlowStep(6, 16, "affine", lu=True, dense=True).double()
    exact.load_state_dict(step.state_dict())
    z_exact = FlowSequence.forward_plain(exact, x.double())[0]
    assert (step(x)[0].double() - z_exact).abs().max() < 1e-5  # W'x + W'b: about 4e-2


def test_fold_after_inference_mode_and_after_replacing_a_layer():
    from glow_train.flows import ActNorm

    step = perturb(FlowStep(4, 8, "affine", lu=True), scale=0.3).eval()
    z = torch.randn(2, 4, 3, 3)
    with torch.inference_mode():
        cached = step.inverse(z)
    torch.testing.assert_close(step.inverse(z), cached)  # the cache built there is usable
    step.flows[0] = ActNorm(4)  # a fresh identity ActNorm replaces the perturbed one
    assert step.units()[0].norm is step.flows[0]
    torch.testing.assert_close(step(z)[0], FlowSequence.forward_plain(step, z)[0])


@pytest.mark.parametrize("shape", [(3, 8, 4, 5), (3, 8)])
def test_channel_splits_are_views_whose_gradients_keep_the_layout(shape):
    """split_channels / deinterleave: the slices' values, and a gradient that comes back
    in one piece, channels_last where the input is (slicing returned it in the default
    layout, which the layers around it then copied)."""
    x = torch.randn(shape)
    if x.dim() == 4:
        x = x.contiguous(memory_format=CL)
    x.requires_grad_()
    a, b = split_channels(x, 3)
    even, odd = deinterleave(x)
    assert torch.equal(a, x[:, :3]) and torch.equal(b, x[:, 3:])
    assert torch.equal(even, x[:, 0::2]) and torch.equal(odd, x[:, 1::2])
    assert all(t._base is x for t in (a, b, even, odd))

    def grad(views, weights):
        total = sum((t * w).sum() for t, w in zip(views, weights, strict=True))
        return torch.autograd.grad(total, x, retain_graph=True)[0]

    layout = CL if x.dim() == 4 else torch.contiguous_format  # the incoming gradients'
    wa, wb, we, wo = (
        torch.randn(t.shape).contiguous(memory_format=layout) for t in (a, b, even, odd)
    )
    expected = torch.cat([wa, wb], dim=1)
    expected[:, 0::2] += we
    expected[:, 1::2] += wo
    torch.testing.assert_close(grad((a, b, even, odd), (wa, wb, we, wo)), expected)
    if x.dim() == 4:
        assert grad((a, b), (wa, wb)).is_contiguous(memory_format=CL)
        assert grad((even, odd), (we, wo)).is_contiguous(memory_format=CL)
