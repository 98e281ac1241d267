"""The 1-D Glow's Student-t prior (model.prior=student_t): its density against
scipy's, the model's density at initialisation in closed form, draws, and a context
model whose conditional density has Student-t tails."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import brute_force_logdet, perturb
from scipy import stats

from glow_train import Glow1D
from glow_train.flows.priors import StudentTPrior, student_t_noise


def test_student_t_prior_is_scipys_density():
    prior = StudentTPrior((3,)).double()
    with torch.no_grad():
        prior.mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        prior.log_scale.copy_(torch.tensor([0.1, -0.3, 0.7]).log1p())
        prior.log_df.copy_(torch.tensor([2.5, 4.0, 30.0]).log())
    z = 3 * torch.randn(6, 3, dtype=torch.float64)
    prior.requires_grad_(False)
    expected = sum(
        stats.t.logpdf(
            z[:, i].numpy(),
            df=float(prior.log_df[i].exp()),
            loc=float(prior.mean[i]),
            scale=float(prior.log_scale[i].exp()),
        )
        for i in range(3)
    )
    torch.testing.assert_close(
        prior.log_prob(z).detach(), torch.from_numpy(expected), atol=1e-10, rtol=0
    )


def test_glow1d_with_a_student_t_prior_at_initialisation_is_independent_t10():
    """Identity ActNorm and couplings and an orthogonal map are not enough for a closed
    form here (a t is not rotation-invariant), so the linear map is set to the identity:
    log p(x) is then a sum of t(10) log-densities."""
    model = (
        Glow1D(dim=3, K=2, hidden_features=8, coupling="affine", lu=False, prior="student_t")
        .double()
        .eval()
    )
    for step in model.flow:
        step.flows[0].initialized.fill_(1)
        with torch.no_grad():
            step.flows[1].weight.copy_(torch.eye(3))
    x = 4 * torch.randn(5, 3, dtype=torch.float64)
    s = 1 / (1 + math.exp(-2.0))  # each affine coupling scales its changed half by sigmoid(2)
    z, logdet = model.encode(x)
    expected = stats.t.logpdf(z.detach().numpy(), df=10).sum(1) + logdet.detach().numpy()
    torch.testing.assert_close(model.log_prob(x).detach(), torch.from_numpy(expected))
    torch.testing.assert_close(logdet, torch.full((5,), 2 * 2 * math.log(s), dtype=torch.float64))


def test_student_t_draws_have_the_distribution_and_follow_the_generator():
    df = torch.tensor([3.0, 8.0], dtype=torch.float64)
    draws = student_t_noise(df, torch.Size([20000, 2]), torch.Generator().manual_seed(0))
    again = student_t_noise(df, torch.Size([20000, 2]), torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws, again)
    for i in range(2):
        # the Kolmogorov-Smirnov test against the exact t distribution
        assert stats.kstest(draws[:, i].numpy(), stats.t(df=float(df[i])).cdf).pvalue > 1e-3
    unseeded = student_t_noise(df, torch.Size([4, 2]))
    assert not torch.equal(unseeded, student_t_noise(df, torch.Size([4, 2])))


@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_context_model_with_student_t_prior(coupling):
    torch.manual_seed(0)
    model = Glow1D(
        dim=1,
        K=2,
        hidden_features=8,
        coupling=coupling,
        lu=True,
        context_dims=3,
        prior="student_t",
        context_magnitudes=True,
    ).double()
    assert model.encoder[0].in_features == 6  # it reads [c, |c|]
    perturb(model, 0.3).eval()
    x = torch.randn(4, 4, dtype=torch.float64)
    h = model.encoder(x[:, :3])
    z, logdet = model.forward_given(x[:, 3:], h)
    for i in range(4):
        hi = h[i : i + 1]
        ld = brute_force_logdet(lambda v, hi=hi: model.forward_given(v, hi)[0], x[i : i + 1, 3:])
        torch.testing.assert_close(logdet[i : i + 1], ld, atol=1e-9, rtol=0)
    # the density is the prior's t at z plus the log-determinant
    mean, log_scale = model.prior.mean_and_log_scale(h)
    df = float(model.prior.log_df.exp())
    expected = (
        stats.t.logpdf(
            z[:, 0].detach().numpy(),
            df=df,
            loc=mean[:, 0].detach().numpy(),
            scale=log_scale[:, 0].exp().detach().numpy(),
        )
        + logdet.detach().numpy()
    )
    torch.testing.assert_close(model.log_prob(x).detach(), torch.from_numpy(expected))
    draws = model.sample_given(x[:, :3].repeat(50, 1), generator=torch.Generator().manual_seed(1))
    assert draws.shape == (200, 1) and torch.isfinite(draws).all()
    loaded = Glow1D.from_config(model.config).double()
    loaded.load_state_dict(model.state_dict())
    torch.testing.assert_close(loaded.eval().log_prob(x), model.log_prob(x))
    assert loaded.encoder.magnitudes
