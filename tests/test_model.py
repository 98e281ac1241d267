"""The whole Glow: invertibility, exact log-determinant, likelihood, sampling, saving."""

from __future__ import annotations

import io
import math

import pytest
import torch
from helpers import brute_force_logdet, perturb

from glow_train import Glow, Glow1D, bits_per_dim, preprocess
from glow_train.flows.priors import gaussian_log_prob

# (in_channels, (H, W), K, L): L = 1, 2, 3; C = 1 and 3; square and non-square.
CONFIGS = [
    (1, (4, 4), 2, 1),
    (3, (4, 8), 2, 1),
    (1, (8, 4), 2, 2),
    (3, (4, 4), 2, 2),
    (1, (8, 8), 1, 3),
    (3, (8, 16), 1, 3),
]


def make_glow(c, size, k, l, dtype=torch.float64, coupling="affine", lu=True, seed=0):
    torch.manual_seed(seed)
    model = Glow(c, size, K=k, L=l, hidden_channels=8, coupling=coupling, lu=lu).to(dtype)
    x = torch.rand(3, c, *size, dtype=dtype, generator=torch.Generator().manual_seed(seed)) - 0.5
    model.initialize(x)
    return perturb(model, scale=0.05, seed=seed), x


def flat_latents(model, x):
    latents, _ = model.encode(x)
    return torch.cat([z.flatten(1) for z in latents], dim=1)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"C{c[0]}-{c[1][0]}x{c[1][1]}-L{c[3]}")
def test_round_trip(cfg):
    model, x = make_glow(*cfg)
    latents, _ = model.encode(x)
    assert torch.allclose(model.decode(latents), x, atol=1e-10, rtol=0)
    model32, x32 = make_glow(*cfg, dtype=torch.float32)
    assert (model32.decode(model32.encode(x32)[0]) - x32).abs().max() < 1e-4


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"C{c[0]}-{c[1][0]}x{c[1][1]}-L{c[3]}")
def test_logdet_matches_brute_force_jacobian(cfg):
    model, x = make_glow(*cfg)
    x = x[:2]
    _, logdet = model.encode(x)
    expected = brute_force_logdet(lambda v: flat_latents(model, v), x)
    torch.testing.assert_close(logdet, expected, atol=1e-7, rtol=1e-8)


@pytest.mark.parametrize("coupling,lu", [("additive", True), ("affine", False)])
def test_logdet_other_variants(coupling, lu):
    model, x = make_glow(3, (4, 4), 2, 2, coupling=coupling, lu=lu)
    _, logdet = model.encode(x[:1])
    expected = brute_force_logdet(lambda v: flat_latents(model, v), x[:1])
    torch.testing.assert_close(logdet, expected, atol=1e-7, rtol=1e-8)


def test_log_prob_is_priors_plus_logdet():
    model, x = make_glow(1, (8, 8), 2, 2)
    latents, logdet = model.encode(x)
    log_prior = model.top_prior.log_prob(latents[-1]) + model.split_priors[0].log_prob(
        latents[0], _kept_half(model, x)
    )
    torch.testing.assert_close(model.log_prob(x), log_prior + logdet)


def _kept_half(model, x):
    from glow_train.flows.squeeze import squeeze2d

    h, _ = model.levels[0](squeeze2d(x))
    return h[:, : h.shape[1] // 2]


def test_every_parameter_gets_a_gradient():
    model, x = make_glow(3, (8, 8), 2, 2, dtype=torch.float32)
    model.log_prob(x).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_initialize_runs_once_and_is_saved():
    torch.manual_seed(0)
    model = Glow(1, 8, K=2, L=2, hidden_channels=8, coupling="affine", lu=True)
    assert not model.is_initialized
    x = torch.rand(16, 1, 8, 8) - 0.5
    model.initialize(x)
    assert model.is_initialized
    # the first ActNorm sees the squeezed input: zero mean, unit variance per channel
    first = model.levels[0].flows[0].flows[0]
    from glow_train.flows.squeeze import squeeze2d

    z, _ = first(squeeze2d(x))
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        z.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-4, rtol=0
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.initialize(torch.rand(16, 1, 8, 8))  # a second call changes nothing
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_save_load_gives_identical_log_prob_and_never_reinitialises():
    model, x = make_glow(3, (8, 8), 2, 2, dtype=torch.float32)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    loaded = Glow.from_config(model.config)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    assert loaded.is_initialized
    expected = model.log_prob(x)
    torch.testing.assert_close(loaded.log_prob(x), expected, rtol=0, atol=0)
    loaded.initialize(x + 3.0)  # would move ActNorm if it re-initialised
    torch.testing.assert_close(loaded.log_prob(x), expected, rtol=0, atol=0)
    loaded.eval()
    torch.testing.assert_close(loaded.log_prob(x), expected, rtol=0, atol=0)  # eval == train


def test_sample_temperature_zero_is_deterministic():
    model, _ = make_glow(3, (8, 8), 2, 2, dtype=torch.float32)
    a = model.sample(4, temperature=0.0, generator=torch.Generator().manual_seed(1))
    b = model.sample(4, temperature=0.0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, a[:1].expand_as(a), rtol=0, atol=0)


def test_sample_latents_scale_with_temperature():
    torch.manual_seed(0)
    model = Glow(3, 8, K=2, L=2, hidden_channels=8, coupling="affine", lu=True).double()
    model.initialize(torch.rand(8, 3, 8, 8, dtype=torch.float64) - 0.5)
    perturb(model.levels, scale=0.05)  # non-trivial flow; priors keep mean 0, std 1
    hot = model.sample(4, temperature=1.0, generator=torch.Generator().manual_seed(3))
    cold = model.sample(4, temperature=0.4, generator=torch.Generator().manual_seed(3))
    for z_hot, z_cold in zip(model.encode(hot)[0], model.encode(cold)[0], strict=True):
        torch.testing.assert_close(z_cold, 0.4 * z_hot, atol=1e-9, rtol=1e-7)


def test_temperature_scales_learned_prior_std():
    model, _ = make_glow(1, (4, 4), 1, 1, dtype=torch.float32)
    prior = model.top_prior
    gen = torch.Generator().manual_seed(0)
    draws = prior.sample(20000, temperature=0.5, generator=gen)
    std = torch.exp(prior.log_scale.detach()) * 0.5
    torch.testing.assert_close(draws.std(0), std, rtol=0.05, atol=0)
    torch.testing.assert_close(draws.mean(0), prior.mean.detach(), atol=0.03, rtol=0)


def test_bits_per_dim_hand_computed():
    # A uniform density on [-0.5, 0.5)^D has log p = 0: exactly n_bits bits per dim.
    assert bits_per_dim(torch.zeros(2), num_dims=12, n_bits=5).tolist() == [5.0, 5.0]
    # A standard normal at x: log p = sum(-log(2 pi)/2 - x^2/2), then add n_bits.
    x = torch.tensor([[0.1, -0.3, 0.2, 0.0]], dtype=torch.float64)
    log_p = gaussian_log_prob(x, torch.zeros_like(x), torch.zeros_like(x))
    nats = sum(0.5 * math.log(2 * math.pi) + 0.5 * v * v for v in (0.1, 0.3, 0.2, 0.0))
    expected = nats / (4 * math.log(2)) + 8
    assert abs(bits_per_dim(log_p, 4, 8).item() - expected) < 1e-12
    assert bits_per_dim(log_p, 4, 3).item() == pytest.approx(expected - 5, abs=1e-12)


def test_bits_per_dim_of_an_untrained_glow_is_plausible():
    torch.manual_seed(0)
    model = Glow(1, 8, K=2, L=2, hidden_channels=8, coupling="affine", lu=True)
    x = torch.rand(64, 1, 8, 8) - 0.5
    model.initialize(x)
    bpd = bits_per_dim(model.log_prob(x), model.num_dims, n_bits=8)
    # Uniform data on [-0.5, 0.5) has differential entropy 0, so a perfect model scores
    # n_bits = 8; a Gaussian fit of it (what an initialised Glow is) costs
    # 0.5 * log2(2 pi e / 12) ~ 0.25 bits/dim more.
    assert 7.9 < bpd.mean().item() < 8.6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(image_size=30, L=2), "not divisible by 2\\*\\*L = 4"),
        (dict(image_size=(8, 12), L=3), "8x12 is not divisible"),
        (dict(L=0), "L must be at least 1"),
        (dict(K=0), "K must be at least 1"),
        (dict(hidden_channels=0), "hidden_channels must be at least 1"),
        (dict(coupling="cubic"), "unknown coupling 'cubic'"),
        (dict(coupling="spline"), "coupling=spline is for vectors \\(model=glow1d"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, match):
    args = dict(in_channels=3, image_size=16, K=1, L=2, hidden_channels=4)
    args |= dict(coupling="affine", lu=True) | kwargs
    with pytest.raises(ValueError, match=match):
        Glow(**args)


def test_class_conditional_prior():
    torch.manual_seed(0)
    model = Glow(1, 8, K=1, L=2, hidden_channels=8, coupling="affine", lu=True, num_classes=3)
    x = torch.rand(4, 1, 8, 8) - 0.5
    y = torch.tensor([0, 1, 2, 0])
    model.initialize(x, y)
    perturb(model.top_prior)
    lp = model.log_prob(x, y)
    assert lp[0] != model.log_prob(x, torch.tensor([1, 1, 2, 0]))[0]
    assert model.sample(4, 0.7, y=y).shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="pass the class labels"):
        model.log_prob(x)


def test_glow1d_round_trip_logdet_and_sampling():
    torch.manual_seed(0)
    model = Glow1D(dim=5, K=3, hidden_features=16, coupling="affine", lu=True).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    model.initialize(x)
    perturb(model, 0.1)
    z, logdet = model.encode(x)
    assert torch.allclose(model.decode(z), x, atol=1e-10)
    expected = brute_force_logdet(lambda v: model.encode(v)[0], x[:2])
    torch.testing.assert_close(logdet[:2], expected)
    assert model.sample(7, 1.0).shape == (7, 5)


def test_autocast_bf16_keeps_likelihood_in_float32():
    model, x = make_glow(3, (8, 8), 2, 2, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = model.log_prob(x)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    torch.testing.assert_close(lp, model.log_prob(x), rtol=0.02, atol=0.5)


def test_log_prob_compiles_without_graph_breaks():
    """torch.compile (train.compile=true) must see the whole step as one graph."""
    model, x = make_glow(3, (8, 8), 2, 2, dtype=torch.float32)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.rand(2, 1, 4, 4), "expected integer 8-bit images .* got torch.float32"),
        (torch.full((2, 1, 4, 4), 300.0), "expected integer 8-bit images"),
        (torch.full((2, 1, 4, 4), 300, dtype=torch.int32), "must be in 0..255, got 300..300"),
        (torch.full((1, 1, 2, 2), -1, dtype=torch.int64), "must be in 0..255, got -1..-1"),
    ],
)
def test_preprocess_refuses_what_is_not_8_bit_pixels(images, match):
    with pytest.raises(ValueError, match=match):
        preprocess(images, n_bits=8)


def test_preprocess_takes_uint8_and_in_range_integers():
    ints = torch.tensor([[0, 128, 255]], dtype=torch.int64)
    expected = torch.tensor([[-0.5, 0.0, 255 / 256 - 0.5]])
    torch.testing.assert_close(preprocess(ints, 8, noise=False), expected)
    torch.testing.assert_close(preprocess(ints.to(torch.uint8), 8, noise=False), expected)


def test_channels_last_levels_compute_what_the_default_layout_computes(monkeypatch):
    """The levels run on channels_last maps; the same model on contiguous maps gives
    the same log-likelihood, gradients and inverse (float64)."""
    import glow_train.models.glow as glow_module
    from glow_train.flows.squeeze import squeeze2d, unsqueeze2d

    model, x = make_glow(3, (8, 8), 2, 2)
    fast = model.log_prob(x)
    fast_grads = torch.autograd.grad(fast.sum(), list(model.parameters()))
    latents, _ = model.encode(x)
    assert latents[-1].is_contiguous(memory_format=torch.channels_last)
    fast_back = model.decode(latents)

    monkeypatch.setattr(glow_module, "squeeze2d", lambda v: squeeze2d(v).contiguous())
    monkeypatch.setattr(glow_module, "unsqueeze2d", lambda v: unsqueeze2d(v).contiguous())
    model.to(memory_format=torch.contiguous_format)
    plain = model.log_prob(x)
    assert model.encode(x)[0][-1].is_contiguous()
    plain_grads = torch.autograd.grad(plain.sum(), list(model.parameters()))
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-10)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_back, model.decode(latents), rtol=0, atol=1e-12)
