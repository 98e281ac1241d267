"""The 1-D Glow's mixture priors (model.prior=mixture|mixture_t): the density against
scipy's full-covariance Gaussians and multivariate t's, draws against the closed-form
law of a multivariate t, the initialisation's choice of components, and checkpoints
of the older diagonal mixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import perturb
from scipy import stats

from glow_train import Glow1D
from glow_train.flows.mixture import MixturePrior


def _model(prior: str, components: int = 3) -> Glow1D:
    return Glow1D(
        dim=3,
        K=1,
        hidden_features=8,
        coupling="affine",
        lu=True,
        prior=prior,
        prior_components=components,
    ).double()


@pytest.mark.parametrize("prior", ["mixture", "mixture_t"])
def test_mixture_prior_is_scipys_mixture_density(prior):
    torch.manual_seed(0)
    model = perturb(_model(prior), 0.3).eval()
    p = model.prior
    z = 2 * torch.randn(6, 3, dtype=torch.float64)
    weights = torch.softmax(p.logits.detach(), 0).numpy()
    tril = p.scale_tril(torch.float64).detach().numpy()
    parts = []
    for m in range(3):
        mean, cov = p.means[m].detach().numpy(), tril[m] @ tril[m].T
        if prior == "mixture_t":
            dist = stats.multivariate_t(mean, cov, df=float(p.log_df[m].detach().exp()))
        else:
            dist = stats.multivariate_normal(mean, cov)
        parts.append(np.log(weights[m]) + dist.logpdf(z.numpy()))
    expected = np.logaddexp.reduce(np.stack(parts), axis=0)
    torch.testing.assert_close(p.log_prob(z).detach(), torch.from_numpy(expected))
    x = torch.randn(4, 3, dtype=torch.float64)
    zx, logdet = model.encode(x)
    torch.testing.assert_close(model.log_prob(x), p.log_prob(zx) + logdet)
    draws = model.sample(200, 1.0, generator=torch.Generator().manual_seed(0))
    again = model.sample(200, 1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws, again)
    loaded = Glow1D.from_config(model.config).double()
    loaded.load_state_dict(model.state_dict())
    torch.testing.assert_close(loaded.eval().log_prob(x), model.log_prob(x))


def test_multivariate_t_draws_follow_its_law():
    """For a multivariate t with D dimensions and ν degrees of freedom,
    (z - μ)ᵀ Σ⁻¹ (z - μ) / D follows F(D, ν), and the covariance is Σ ν / (ν - 2)."""
    p = MixturePrior((3,), 1, tails=True).double()
    tril = torch.tensor([[1.0, 0, 0], [0.5, 2.0, 0], [-1.0, 0.3, 0.5]], dtype=torch.float64)
    with torch.no_grad():
        p.means.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        p.log_scales.copy_(tril.diagonal().log()[None])
        p.off_diagonal.copy_(tril[None])
        p.log_df.fill_(np.log(6.0))
    z = p.sample(20000, generator=torch.Generator().manual_seed(0)).detach()
    e = torch.linalg.solve_triangular(tril, (z - p.means[0].detach()).T, upper=False)
    f = (e.square().sum(0) / 3).numpy()
    assert stats.kstest(f, stats.f(3, 6).cdf).pvalue > 0.01
    cov = np.cov(z.numpy(), rowvar=False)
    np.testing.assert_allclose(cov, (tril @ tril.T).numpy() * 6 / 4, atol=0.25)


def _clusters(counts, spread=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]])[: len(counts)]
    return centers, torch.cat(
        [
            c + spread * torch.randn(n, 2, generator=gen)
            for c, n in zip(centers, counts, strict=True)
        ]
    )


@pytest.mark.parametrize("tails", [False, True])
def test_initialisation_finds_the_clusters_and_their_number(tails):
    """Three separated clusters: the initialisation keeps 3 of 8 components (by BIC),
    one on each cluster with its weight and spread; a second call (a loaded or trained
    model) changes nothing. One cloud keeps one component."""
    centers, z = _clusters([600, 300, 100])
    prior = MixturePrior((2,), 8, tails=tails)
    prior.initialize(z)
    assert int(prior.used) == 3
    order = prior.means[:3, 0].argsort()  # left, top, right
    torch.testing.assert_close(prior.means[:3][order].detach(), centers, atol=0.1, rtol=0)
    weights = torch.softmax(prior.logits[:3], 0)[order].detach()
    torch.testing.assert_close(weights, torch.tensor([0.6, 0.3, 0.1]), atol=0.01, rtol=0)
    tril = prior.scale_tril().detach()
    torch.testing.assert_close(
        tril.diagonal(dim1=1, dim2=2), torch.full((3, 2), 0.5), atol=0.06, rtol=0
    )
    assert tril.tril(-1).abs().max() < 0.06
    if tails:  # Gaussian clusters: the fitted tails are light
        assert prior.log_df[:3].exp().min() > 30
    before = {k: v.clone() for k, v in prior.state_dict().items()}
    prior.initialize(z + 10)
    for key, value in prior.state_dict().items():
        torch.testing.assert_close(value, before[key])
    one = MixturePrior((2,), 8, tails=tails)
    one.initialize(_clusters([1000])[1])
    assert int(one.used) == 1
    assert one.log_prob(torch.zeros(4, 2)).shape == (4,)


def test_initialisation_fits_the_degrees_of_freedom_of_t_data():
    """Draws of a correlated multivariate t with 4 degrees of freedom: the ECM fit at
    initialisation keeps one component and finds its ν and scale matrix."""
    shape = np.array([[1.0, 0.6, 0.0], [0.6, 2.0, -0.5], [0.0, -0.5, 0.8]])
    draws = stats.multivariate_t(np.zeros(3), shape, df=4.0, seed=0).rvs(4000)
    prior = MixturePrior((3,), 4, tails=True).double()
    prior.initialize(torch.from_numpy(draws))
    assert int(prior.used) in (1, 2)
    top = int(prior.logits[: int(prior.used)].argmax())
    assert 3.0 < float(prior.log_df[top].detach().exp()) < 5.5
    if int(prior.used) == 1:
        tril = prior.scale_tril().detach()[0].numpy()
        np.testing.assert_allclose(tril @ tril.T, shape, atol=0.15)


def test_a_diagonal_mixture_checkpoint_loads_as_the_same_density():
    """Mixture checkpoints written before full covariances (no off_diagonal, no used)
    load as the diagonal mixture they were."""
    torch.manual_seed(0)
    model = perturb(_model("mixture"), 0.3)
    state = {k: v for k, v in model.state_dict().items() if "off_diagonal" not in k}
    state = {k: v for k, v in state.items() if not k.endswith("prior.used")}
    loaded = _model("mixture")
    loaded.load_state_dict(state)
    p = loaded.prior
    assert int(p.used) == 3 and p.off_diagonal.abs().max() == 0
    z = torch.randn(5, 3, dtype=torch.float64)
    weights = torch.softmax(p.logits.detach(), 0).numpy()
    expected = np.log(
        sum(
            weights[m]
            * stats.multivariate_normal(
                p.means[m].detach().numpy(), np.diag(p.log_scales[m].detach().exp().numpy() ** 2)
            ).pdf(z.numpy())
            for m in range(3)
        )
    )
    torch.testing.assert_close(p.log_prob(z).detach(), torch.from_numpy(expected))


@pytest.mark.parametrize("prior", ["mixture", "mixture_t"])
def test_mixture_priors_are_unconditional(prior):
    with pytest.raises(ValueError, match=f"prior={prior} is for unconditional models"):
        Glow1D(
            dim=2, K=1, hidden_features=8, coupling="affine", lu=True, prior=prior, context_dims=2
        )
    with pytest.raises(ValueError, match="unknown prior 'laplace'"):
        Glow1D(dim=2, K=1, hidden_features=8, coupling="affine", lu=True, prior="laplace")
