"""The rational-quadratic spline coupling (model.coupling=spline): the spline itself,
its log-determinant against the brute-force Jacobian, densities with a closed form,
save/load, and a run through glow-train."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import brute_force_logdet, perturb, run_console

from glow_train import Glow1D
from glow_train.cli import train_main
from glow_train.flows.spline import SplineCoupling, rational_quadratic, spline_parameters

BOUND = 3.0


def _raw(shape, bins, scale, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, spline_parameters(bins), generator=gen, dtype=torch.float64)


def test_zero_parameters_give_the_identity():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    y, log_derivative = rational_quadratic(x, torch.zeros(101, spline_parameters(6)), BOUND)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(log_derivative, torch.zeros_like(x), atol=1e-12, rtol=0)


def test_spline_is_monotone_inverts_and_its_log_derivative_is_the_derivative():
    x = torch.linspace(-4, 4, 2001, dtype=torch.float64).requires_grad_(True)
    raw = _raw((1,), 8, 2.0).expand(2001, -1)  # one spline over the whole grid
    y, log_derivative = rational_quadratic(x, raw, BOUND)
    assert (y[1:] - y[:-1] > 0).all()
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(log_derivative, grad.log(), atol=1e-9, rtol=0)
    back, inverse_log = rational_quadratic(y.detach(), raw, BOUND, inverse=True)
    torch.testing.assert_close(back, x.detach(), atol=1e-8, rtol=0)
    torch.testing.assert_close(inverse_log, -log_derivative.detach(), atol=1e-8, rtol=0)
    outside = x.detach().abs() >= BOUND  # the identity tails
    torch.testing.assert_close(y.detach()[outside], x.detach()[outside])
    # the knots span [-B, B] onto [-B, B]: the spline maps the interval onto itself
    ends, _ = rational_quadratic(torch.tensor([-BOUND, BOUND], dtype=torch.float64), raw[:2], BOUND)
    torch.testing.assert_close(ends, torch.tensor([-BOUND, BOUND], dtype=torch.float64))


def test_a_two_bin_spline_matches_its_formula_by_hand():
    """Two bins of width 1 on [-1, 1] with heights of about 2/3 and 4/3 (raw heights
    0 and log 2), every derivative 1: the left bin's value and log-derivative at its
    middle, from Durkan et al.'s formulas written out here."""
    bins, bound = 2, 1.0
    # softmax([0, log 2]) = (1/3, 2/3), on [-1, 1] with the floor MIN_BIN
    raw = torch.tensor([[0.0, 0.0, 0.0, math.log(2.0), 0.0]], dtype=torch.float64)
    from glow_train.flows import spline

    floor = spline.MIN_BIN
    h0 = 2 * bound * (floor + (1 - 2 * floor) / 3)
    w0 = 1.0
    s = h0 / w0
    d0, d1 = 1.0, 1.0  # the tail's, and the raw interior derivative 0 -> 1
    x = torch.tensor([-0.5], dtype=torch.float64)  # xi = 0.5 in the left bin
    xi = 0.5
    expected = -bound + h0 * (s * xi**2 + d0 * xi * (1 - xi)) / (
        s + (d1 + d0 - 2 * s) * xi * (1 - xi)
    )
    expected_log = math.log(
        s**2 * (d1 * xi**2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2)
    ) - 2 * math.log(s + (d1 + d0 - 2 * s) * xi * (1 - xi))
    y, log_derivative = rational_quadratic(x, raw, bound)
    assert bins == 2
    assert y.item() == pytest.approx(expected, abs=1e-12)
    assert log_derivative.item() == pytest.approx(expected_log, abs=1e-12)


def test_spline_coupling_log_det_is_the_brute_force_jacobian():
    torch.manual_seed(0)
    layer = perturb(SplineCoupling(5, 16, bins=6, bound=BOUND), 0.5).double()
    x = 1.5 * torch.randn(6, 5, dtype=torch.float64)
    z, logdet = layer(x)
    torch.testing.assert_close(
        logdet, brute_force_logdet(lambda v: layer(v)[0], x), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(layer.inverse(z), x, atol=1e-9, rtol=0)
    assert (logdet.abs() > 1e-3).all()  # the perturbed spline is not the identity


@pytest.mark.parametrize("context", [0, 3])
def test_glow1d_spline_log_det_and_inverse(context):
    torch.manual_seed(0)
    dim = 1 if context else 4  # with a context even one dimension gets a spline
    model = Glow1D(
        dim=dim,
        K=2,
        hidden_features=8,
        coupling="spline",
        lu=True,
        context_dims=context,
        spline_bins=5,
        spline_bound=BOUND,
    ).double()
    perturb(model, 0.3)
    model.eval()
    x = torch.randn(5, context + dim, dtype=torch.float64)
    if context:
        h = model.encoder(x[:, :context])
        z, logdet = model.forward_given(x[:, context:], h)
        for i in range(5):
            hi = h[i : i + 1]
            expected = brute_force_logdet(
                lambda v, hi=hi: model.forward_given(v, hi)[0], x[i : i + 1, context:]
            )
            torch.testing.assert_close(logdet[i : i + 1], expected, atol=1e-9, rtol=0)
        torch.testing.assert_close(model._inverse_given(z, h), x[:, context:], atol=1e-9, rtol=0)
    else:
        z, logdet = model.encode(x)
        expected = brute_force_logdet(lambda v: model.encode(v)[0], x)
        torch.testing.assert_close(logdet, expected, atol=1e-9, rtol=0)
        torch.testing.assert_close(model.decode(z), x, atol=1e-9, rtol=0)


def test_glow1d_spline_at_initialisation_is_the_standard_normal():
    """Identity ActNorm and splines, an orthogonal linear map and an N(0, I) prior:
    log p(x) is the standard normal's, in closed form."""
    model = Glow1D(dim=3, K=3, hidden_features=8, coupling="spline", lu=True).double().eval()
    for step in model.flow:
        step.flows[0].initialized.fill_(1)
    x = 2 * torch.randn(7, 3, dtype=torch.float64)
    expected = -0.5 * x.pow(2).sum(1) - 1.5 * math.log(2 * math.pi)
    # the LU factors start from a float32 rotation: |det| = 1 to float32's rounding
    torch.testing.assert_close(model.log_prob(x), expected, atol=1e-6, rtol=0)


def test_trained_spline_density_integrates_to_one():
    """A 2-D spline model with perturbed splines: its density, summed on a fine grid,
    is 1 (and it is not the standard normal's)."""
    torch.manual_seed(1)
    model = Glow1D(dim=2, K=2, hidden_features=8, coupling="spline", lu=True).double()
    for step in model.flow:
        step.flows[0].initialized.fill_(1)
        perturb(step.flows[2], 0.2)  # larger: spikes finer than the grid
    model.eval()
    edge, n = 9.0, 601
    grid = torch.linspace(-edge, edge, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    with torch.no_grad():
        density = model.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).exp()
    cell = (2 * edge / (n - 1)) ** 2
    assert float(density.sum() * cell) == pytest.approx(1.0, abs=2e-3)
    normal = torch.exp(-0.5 * (xx**2 + yy**2)).reshape(-1) / (2 * math.pi)
    assert float((density - normal).abs().sum() * cell) > 0.05


def test_spline_model_survives_save_and_load():
    torch.manual_seed(0)
    model = perturb(
        Glow1D(
            dim=3,
            K=2,
            hidden_features=8,
            coupling="spline",
            lu=True,
            spline_bins=5,
            spline_bound=2.5,
        ),
        0.3,
    ).eval()
    loaded = Glow1D.from_config(model.config)
    loaded.load_state_dict(model.state_dict())
    loaded.eval()
    x = torch.randn(4, 3)
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x))
    assert loaded.config["spline_bins"] == 5 and loaded.config["spline_bound"] == 2.5


def test_glow_train_fits_a_spline_model_and_images_refuse_it(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "t.csv"
    np.savetxt(path, rng.standard_t(4, size=(300, 3)), delimiter=",", header="a,b,c", comments="")
    common = ["train.progress=false", "device=cpu"]
    status, out, err = run_console(
        train_main,
        [
            "dataset=csv",
            f"dataset.path={path}",
            "model.coupling=spline",
            "train.max_steps=60",
            "train.eval_every_steps=20",
            f"run_dir={tmp_path / 'run'}",
            *common,
        ],
        tmp_path,
    )
    assert status == 0, err
    assert "test nats/dim" in out
    assert (tmp_path / "run" / "best.pt").exists()
    status, out, err = run_console(
        train_main, ["model.coupling=spline", f"run_dir={tmp_path / 'img'}", *common], tmp_path
    )
    assert status != 0
    assert len(err.strip().splitlines()) == 1
    assert "model.coupling" in err and "glow1d" in err
    assert not (tmp_path / "img").exists()


@pytest.mark.parametrize(
    "option, match",
    [
        ("model.spline_bins=1", "spline_bins must be in 2..256, got 1"),
        ("model.spline_bins=1500", "spline_bins must be in 2..256, got 1500"),
        ("model.spline_bound=0", "spline_bound must be > 0"),
        ("model.prior_components=0", "prior_components must be at least 1"),
    ],
)
def test_spline_and_prior_options_are_checked_whatever_the_coupling(tmp_path, option, match):
    """The default coupling is affine and the default prior Student-t: a bad spline or
    mixture value is still refused in one line, not silently ignored."""
    path = tmp_path / "t.csv"
    np.savetxt(
        path,
        np.random.default_rng(0).normal(size=(50, 2)),
        delimiter=",",
        header="a,b",
        comments="",
    )
    args = [
        "dataset=csv",
        f"dataset.path={path}",
        option,
        f"run_dir={tmp_path / 'run'}",
        "train.progress=false",
        "device=cpu",
    ]
    status, out, err = run_console(train_main, args, tmp_path)
    assert status != 0 and len(err.strip().splitlines()) == 1
    assert match in err
    assert not (tmp_path / "run").exists()
