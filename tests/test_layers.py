"""Each flow layer: round trip, log-determinant against the brute-force Jacobian."""

from __future__ import annotations

import pytest
import torch
from helpers import brute_force_logdet, perturb

from glow_train.flows import ActNorm, Coupling, FlowSequence, FlowStep, InvertibleLinear
from glow_train.flows.squeeze import squeeze2d, unsqueeze2d

LAYERS = {
    "actnorm-map": (lambda: ActNorm(4), (2, 4, 3, 5)),
    "actnorm-vec": (lambda: ActNorm(5), (3, 5)),
    "invconv-lu": (lambda: InvertibleLinear(4, lu=True), (2, 4, 3, 5)),
    "invconv-plain": (lambda: InvertibleLinear(4, lu=False), (2, 4, 3, 5)),
    "linear-lu-vec": (lambda: InvertibleLinear(5, lu=True), (3, 5)),
    "coupling-affine": (lambda: Coupling(4, 8, "affine"), (2, 4, 3, 5)),
    "coupling-additive": (lambda: Coupling(4, 8, "additive"), (2, 4, 3, 5)),
    "coupling-affine-odd": (lambda: Coupling(5, 8, "affine"), (2, 5, 2, 2)),
    "coupling-mlp": (lambda: Coupling(5, 8, "affine", dense=True), (3, 5)),
    "squeeze-then-step": (lambda: SqueezeThen([FlowStep(12, 8, "affine", lu=True)]), (2, 3, 4, 6)),
    "flowstep": (lambda: FlowStep(4, 8, "affine", lu=True), (2, 4, 2, 4)),
    "flowstep-1d": (lambda: FlowStep(6, 8, "additive", lu=False, dense=True), (3, 6)),
}


class SqueezeThen(FlowSequence):
    """A squeeze (a permutation: log-det 0) before a flow, as every Glow level starts."""

    def forward(self, x):
        return super().forward(squeeze2d(x))

    def inverse(self, z):
        return unsqueeze2d(super().inverse(z))


def make(name: str, dtype=torch.float64):
    factory, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = perturb(factory().to(dtype), scale=0.3)
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    return layer, x


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_round_trip_float64(name):
    layer, x = make(name)
    z, logdet = layer(x)
    assert z.shape == (x.shape[0], *z.shape[1:]) and logdet.shape == (x.shape[0],)
    assert torch.allclose(layer.inverse(z), x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_round_trip_float32(name):
    layer, x = make(name, torch.float32)
    z, _ = layer(x)
    assert (layer.inverse(z) - x).abs().max() < 1e-4
    assert z.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_logdet_matches_brute_force_jacobian(name):
    layer, x = make(name)
    _, logdet = layer(x)
    expected = brute_force_logdet(lambda v: layer(v)[0], x)
    assert logdet.dtype == torch.float64
    torch.testing.assert_close(logdet, expected, atol=1e-8, rtol=1e-8)


def test_logdet_is_nonzero_so_the_checks_mean_something():
    for name in ("actnorm-map", "invconv-lu", "invconv-plain", "coupling-affine", "flowstep"):
        layer, x = make(name)
        assert layer(x)[1].abs().min() > 1e-3, name


def test_actnorm_initialisation_gives_zero_mean_unit_variance():
    x = 3.0 + 2.5 * torch.randn(64, 3, 4, 4, dtype=torch.float64)
    norm = ActNorm(3).double()
    assert not norm.initialized
    norm.initialize_from(x)
    z, _ = norm(x)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=z.dtype))
    torch.testing.assert_close(
        z.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=z.dtype), rtol=1e-6, atol=0
    )
    assert bool(norm.initialized)


def test_actnorm_constant_channel_is_finite():
    x = torch.randn(16, 2, 4, 4)
    x[:, 1] = 0.25  # a constant channel (e.g. an always-black border)
    norm = ActNorm(2)
    norm.initialize_from(x)
    z, logdet = norm(x)
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    assert norm.log_scale[1] == 0 and torch.allclose(z[:, 1], torch.zeros_like(z[:, 1]))


def test_actnorm_initialized_flag_survives_state_dict():
    a, b = ActNorm(3), ActNorm(3)
    a.initialize_from(torch.randn(8, 3, 2, 2))
    b.load_state_dict(a.state_dict())
    assert bool(b.initialized)
    torch.testing.assert_close(b.log_scale, a.log_scale)


def test_invconv_lu_weight_is_lu_product_and_logdet_is_sum_log_s():
    layer = perturb(InvertibleLinear(5, lu=True).double())
    w = layer.weight_matrix()
    torch.testing.assert_close(torch.linalg.slogdet(w)[1], layer.log_s.sum())
    # P and sign(s) are buffers: they must survive a save.
    assert {"perm", "sign_s"} <= set(dict(layer.named_buffers()))


def test_invconv_inverse_cache_follows_parameter_values():
    layer = InvertibleLinear(4, lu=True).eval()
    first = layer.inverse_matrix()
    assert layer.inverse_matrix() is first  # cached in eval mode
    with torch.no_grad():
        layer.log_s.add_(0.5)  # e.g. an optimiser step or an EMA copy
    second = layer.inverse_matrix()
    assert second is not first
    torch.testing.assert_close(second @ layer.weight_matrix(), torch.eye(4, dtype=torch.float64))
    other = InvertibleLinear(4, lu=True)
    layer.load_state_dict(other.state_dict())
    torch.testing.assert_close(layer.inverse_matrix(), torch.linalg.inv(other.weight_matrix()))
    cached = layer.inverse_matrix()
    layer.train().eval()  # a trainer sampling between steps: nothing changed, nothing rebuilt
    assert layer.inverse_matrix() is cached
    layer.log_s.data.mul_(2.0)  # a write that bumps no version counter (as fused Adam's)
    torch.testing.assert_close(layer.inverse_matrix(), torch.linalg.inv(layer.weight_matrix()))


def test_coupling_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown coupling 'spline'"):
        Coupling(4, 8, "spline")


def test_squeeze_layout():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    z = squeeze2d(x)
    assert z.shape == (1, 4, 2, 2)
    # channel 2i + j holds pixel (2h + i, 2w + j)
    assert z[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]
    assert torch.equal(unsqueeze2d(z), x)
