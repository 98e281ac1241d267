r"""Mixture priors of the 1-D Glow (`model.prior=mixture|mixture_t`), and their fit
at initialisation.

`MixturePrior` is a mixture of full-covariance Gaussians or multivariate
Student-t's over the flow's output: separated modes need no tearing of the flow, and
heavy tails no extreme stretch of it. How many components it uses, where they sit and
(with tails) their degrees of freedom are fitted to the first batch's latents, as
ActNorm takes that batch's statistics: k-means, EM for a Gaussian mixture
(`fit_gaussian_mixture`), ECM for a mixture of t's (`fit_t_mixture`), and
the number of components by BIC. Training then moves every parameter by gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from glow_train.flows.base import autocast_off, logdet_dtype
from glow_train.flows.priors import HALF_LOG_2PI, INITIAL_DF, chi_square

__all__ = ["MixturePrior", "fit_gaussian_mixture", "fit_t_mixture", "DF_GRID"]


def _k_means(points: Tensor, m: int, iterations: int, gen: torch.Generator) -> Tensor:
    """`m` centers of `points` `(N, D)`: k-means++ seeding (each next center drawn
    with probability proportional to its squared distance from the chosen ones), then
    `iterations` Lloyd steps."""
    first = torch.randint(points.shape[0], (1,), generator=gen, device=points.device)
    centers = points[first]
    while centers.shape[0] < m:
        d2 = torch.cdist(points, centers).min(dim=1).values.square()
        pick = torch.multinomial(d2 / d2.sum(), 1, generator=gen)
        centers = torch.cat([centers, points[pick]])
    for _ in range(iterations):
        assign = torch.cdist(points, centers).argmin(dim=1)
        for k in range(m):
            members = points[assign == k]
            if len(members):
                centers[k] = members.mean(0)
    return centers


def fit_gaussian_mixture(
    points: Tensor, k: int, gen: torch.Generator, restarts: int = 4, em_steps: int = 30
) -> tuple[Tensor, Tensor, Tensor, float]:
    """A `k`-component full-covariance Gaussian mixture of `points` `(N, D)`:
    k-means (k-means++ seeding from `gen`, the best of `restarts`), then
    `em_steps` EM steps from its clusters, each covariance floored at 1e-3 of the mean
    variance. Returns `(weights (k,), means (k, D), covariances (k, D, D), log L)`."""
    n, d = points.shape
    best = None
    for _ in range(restarts):  # keep the restart with the smallest within-cluster spread
        centers = _k_means(points, k, 20, gen)
        inertia = torch.cdist(points, centers).min(dim=1).values.square().sum()
        if best is None or inertia < best[0]:
            best = (inertia, centers)
    resp = torch.nn.functional.one_hot(torch.cdist(points, best[1]).argmin(dim=1), k)
    resp = resp.to(points.dtype)  # (N, k): responsibilities, first the clusters
    floor = _floor(points)
    for _ in range(em_steps + 1):
        counts = resp.sum(0) + 1e-9
        weights = counts / n
        means, covs = _m_step(points, resp.T, counts, counts, floor)
        q, log_det = _mahalanobis(points, means, covs)
        joint = (_log_density(q, log_det, d) + weights.log()[:, None]).T
        resp = torch.softmax(joint, dim=1)  # (N, k)
    return weights, means, covs, float(torch.logsumexp(joint, dim=1).sum())


def _floor(points: Tensor) -> Tensor:
    """The least covariance of a fitted component: 1e-3 of the mean variance, `(D, D)`."""
    eye = torch.eye(points.shape[1], dtype=points.dtype, device=points.device)
    return 1e-3 * points.var(0).mean() * eye


#: the degrees of freedom `fit_t_mixture` chooses from
DF_GRID = tuple(2.5 * 80.0 ** (i / 23) for i in range(24))  # 2.5 to 200, evenly in log


def _m_step(
    points: Tensor, w: Tensor, mean_total: Tensor, cov_total: Tensor, floor: Tensor
) -> tuple[Tensor, Tensor]:
    """The weighted M-step of both fits: each component's mean, `w @ points` over
    `mean_total`, and covariance, the `w`-weighted sum of the outer products of the
    deviations from it over `cov_total`, plus `floor`.

    Args:
        points: `(N, D)`.
        w: `(k, N)`, each point's weight in each component.
        mean_total: `(k,)`, what the weighted sum of the points is divided by.
        cov_total: `(k,)`, what the weighted sum of the outer products is divided by.
        floor: `(D, D)`, added to every covariance (`_floor`).

    Returns:
        The means `(k, D)` and covariances `(k, D, D)`.
    """
    means = w @ points / mean_total[:, None]
    diff = points[None] - means[:, None]  # (k, N, D)
    covs = torch.einsum("kn,kni,knj->kij", w, diff, diff) / cov_total[:, None, None]
    return means, covs + floor


def _distances(points: Tensor, means: Tensor, chol: Tensor) -> Tensor:
    """Each point's squared Mahalanobis distance from each component, `(k, N)`: points
    `(N, D)`, means `(k, D)`, Cholesky factors `(k, D, D)` of the covariances."""
    diff = points[None] - means[:, None]  # (k, N, D)
    return torch.linalg.solve_triangular(chol, diff.transpose(1, 2), upper=False).square().sum(1)


def _mahalanobis(points: Tensor, means: Tensor, covs: Tensor) -> tuple[Tensor, Tensor]:
    """`(q, log|L|)`: each point's squared Mahalanobis distance from each component,
    `(k, N)`, and each component's log-determinant of its Cholesky factor, `(k, 1)`."""
    chol = torch.linalg.cholesky(covs)
    q = _distances(points, means, chol)
    return q, torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)[:, None]


def _log_density(q: Tensor, log_det: Tensor, d: int, df: Tensor | None = None) -> Tensor:
    """A component's log-density from `q` and `log|L|`: Gaussian, or multivariate t
    with `df` (broadcast against `q`)."""
    if df is None:
        return -0.5 * q - log_det - d * HALF_LOG_2PI
    return (
        torch.lgamma((df + d) / 2)
        - torch.lgamma(df / 2)
        - d / 2 * torch.log(df * math.pi)
        - log_det
        - (df + d) / 2 * torch.log1p(q / df)
    )


def fit_t_mixture(
    points: Tensor, weights: Tensor, means: Tensor, covs: Tensor, steps: int = 30
) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    r"""A mixture of multivariate t's fitted to `points` `(N, D)` by ECM (Peel and
    McLachlan 2000) from a Gaussian mixture's `weights`, `means` and `covs`: each
    step weights every point by its responsibility and by $u = (\nu+D)/(\nu+q)$
    for the means and scale matrices, then picks each component's $\nu$ from
    `DF_GRID` by its weighted log-likelihood. Returns
    `(weights, means, scale matrices, df (k,), log L)`."""
    n, d = points.shape
    floor = _floor(points)
    grid = torch.tensor(DF_GRID, dtype=points.dtype, device=points.device)[:, None, None]
    df = torch.full_like(weights, DF_GRID[-1])
    for step in range(steps + 1):
        q, log_det = _mahalanobis(points, means, covs)
        joint = _log_density(q, log_det, d, df[:, None]) + weights.log()[:, None]  # (k, N)
        resp = torch.softmax(joint, dim=0)
        if step == steps:
            break
        u = resp * (df[:, None] + d) / (df[:, None] + q)
        weights = resp.sum(1) / n
        means, covs = _m_step(points, u, u.sum(1), resp.sum(1), floor)
        q, log_det = _mahalanobis(points, means, covs)  # each df: the best on the grid
        df = grid.flatten()[(_log_density(q, log_det, d, grid) * resp).sum(2).argmax(0)]
    return weights, means, covs, df, float(torch.logsumexp(joint, dim=0).sum())


class MixturePrior(nn.Module):
    r"""A mixture of `M` full-covariance Gaussians (or, with `tails=True`,
    multivariate Student-t's) over `(B, *shape)`, flattened to `D` values, with
    learned weights $\pi_m$, means $\mu_m$, Cholesky factors $L_m$
    and (with tails) degrees of freedom $\nu_m$:

    $$
    \log p(z) = \operatorname{logsumexp}_m [\log\pi_m + \log p_m(z)],\quad
    e_m = L_m^{-1}(z - \mu_m),\quad q_m = \lVert e_m\rVert^2,
    $$

    with $\log p_m = -\tfrac D2\log 2\pi - \log|L_m| - \tfrac12 q_m$ for a Gaussian and

    $$
    \log p_m = \log\Gamma(\tfrac{\nu_m+D}2) - \log\Gamma(\tfrac{\nu_m}2) - \tfrac D2\log\nu_m\pi
    - \log|L_m| - \tfrac{\nu_m+D}2\log(1 + q_m/\nu_m)
    $$

    for a Student-t ($\log|L_m| = \sum_i \log L_{m,ii}$), in at least float32 with
    autocast off. $L_m$ is a free strictly-lower triangle (`off_diagonal`, `(M, D, D)`)
    plus the exponential of `log_scales[m]` on its diagonal, so a mixture of diagonal Gaussians
    is the case of a zero triangle (and older `mixture` checkpoints, written without
    it, load as exactly that). A multivariate t's tails are elliptical, one scale
    shared by all `D` values of a draw (volatility common to a window of returns).

    The means start at fixed, seeded draws from $\mathcal N(0, I)$ (equal means
    would keep the components equal under gradient descent); `initialize` then
    fits them to the first batch's latents, as ActNorm takes that batch's statistics.
    Unconditional only.
    """

    def __init__(self, shape: tuple[int, ...], components: int, seed: int = 0, tails: bool = False):
        super().__init__()
        if components < 1:
            raise ValueError(f"a mixture prior needs at least 1 component, got {components}")
        gen = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.tails = bool(tails)
        d = math.prod(shape)
        self.means = nn.Parameter(torch.randn((components, *shape), generator=gen))
        self.log_scales = nn.Parameter(torch.zeros((components, *shape)))
        self.off_diagonal = nn.Parameter(torch.zeros(components, d, d))
        self.logits = nn.Parameter(torch.zeros(components))
        if self.tails:
            self.log_df = nn.Parameter(torch.full((components,), math.log(INITIAL_DF)))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self.register_buffer("used", torch.tensor(components))  # the first `used` count

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "log_scales" in state_dict:  # older mixtures: diagonal, all components
            state_dict.setdefault(prefix + "off_diagonal", torch.zeros_like(self.off_diagonal))
            state_dict.setdefault(prefix + "used", torch.tensor(self.means.shape[0]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale_tril(self, dtype: torch.dtype | None = None) -> Tensor:
        """The Cholesky factors $L_m$ of the components in use, `(used, D, D)`."""
        k = int(self.used)
        diagonal = torch.exp(self.log_scales[:k].reshape(k, -1).to(dtype))
        return torch.tril(self.off_diagonal[:k].to(dtype), -1) + torch.diag_embed(diagonal)

    @torch.no_grad()
    def initialize(self, z: Tensor) -> None:
        r"""Data-dependent initialisation from latents `z` `(N, *shape)` (the flow's
        output on the first batch, as ActNorm's): for each count $k \le M$, a
        Gaussian mixture fitted by `fit_gaussian_mixture` (with tails, then a
        mixture of t's from it by `fit_t_mixture`); the count with the smallest
        BIC, $-2\log L + p\log N$ with $p = k(D + D(D+1)/2) + k - 1$ free
        parameters ($+k$ degrees of freedom with tails), is the one used: the
        `used` first components, the others stay out of the density. The search
        stops once two counts in a row have not lowered the BIC, and takes no more
        components than leave two points per free parameter. The fit runs on the
        whitened points (k-means is not affine invariant: the fit would depend on the
        random linear maps before the prior) and is mapped back. Does nothing once
        initialised (e.g. after loading a checkpoint)."""
        if bool(self.initialized):
            return
        points = z.reshape(z.shape[0], -1).double()
        n, d = points.shape
        if n < d + 2:  # too few points for a covariance: keep the seeded draws
            self.initialized.fill_(1)
            return
        center = points.mean(0)
        whiten = torch.linalg.cholesky(torch.cov(points.T).reshape(d, d) + 1e-3 * _floor(points))
        white = torch.linalg.solve_triangular(whiten, (points - center).T, upper=False).T
        per_component = d + d * (d + 1) / 2 + 1 + self.tails  # mean, covariance, weight, df
        best = None
        for k in range(1, self.means.shape[0] + 1):
            if k > 1 and n < 2 * k * per_component:
                break  # fewer than 2 points per free parameter: no more components
            gen = torch.Generator(device=points.device).manual_seed(self.seed)
            fit = fit_gaussian_mixture(white, k, gen)
            if self.tails:
                fit = fit_t_mixture(white, *fit[:3])
            bic = -2 * fit[-1] + (k * per_component - 1) * math.log(n)
            if best is None or bic < best[0]:
                best, worse = (bic, fit), 0
            else:
                worse += 1
                if worse == 2:  # two more components did not help: neither will more
                    break
        weights, means, covs = best[1][:3]
        means, covs = center + means @ whiten.T, whiten @ covs @ whiten.T
        k = len(weights)
        if self.tails:
            self.log_df[:k] = best[1][3].log()
        chol = torch.linalg.cholesky(covs)
        diagonal = torch.diagonal(chol, dim1=1, dim2=2)
        self.log_scales[:k] = diagonal.log().view_as(self.log_scales[:k])
        self.off_diagonal[:k] = torch.tril(chol, -1)
        self.means[:k] = means.view_as(self.means[:k])
        self.logits[:k] = weights.clamp_min(1e-6).log()
        self.used.fill_(k)
        self.initialized.fill_(1)

    def component_log_probs(self, z: Tensor) -> Tensor:
        """`log pi_m + log p_m(z)` for each item and component in use, `(B, used)`."""
        dtype = logdet_dtype(z)
        k = int(self.used)
        with autocast_off(z):
            x = z.reshape(z.shape[0], -1).to(dtype)
            d = x.shape[1]
            q = _distances(x, self.means[:k].reshape(k, d).to(dtype), self.scale_tril(dtype))
            log_det = self.log_scales[:k].reshape(k, d).to(dtype).sum(1, keepdim=True)
            df = torch.exp(self.log_df[:k, None].to(dtype)) if self.tails else None
            log_p = _log_density(q, log_det, d, df)
            return (log_p + torch.log_softmax(self.logits[:k, None].to(dtype), dim=0)).T

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Per-item log-density of `z` in nats, `(B,)` (unconditional: no `context`)."""
        if context is not None:
            raise ValueError("a mixture prior is unconditional")
        return torch.logsumexp(self.component_log_probs(z), dim=1)

    def sample(
        self,
        batch_size: int,
        context: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""A component per draw (by the weights), then $\mu_m + T L_m \epsilon$,
        $\epsilon$ standard normal (divided by one $\sqrt{G/\nu_m}$,
        $G \sim \chi^2_{\nu_m}$, per draw with tails)."""
        if context is not None:
            raise ValueError("a mixture prior is unconditional")
        k = int(self.used)
        probs = torch.softmax(self.logits[:k].detach().float(), dim=0)
        which = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        dtype = logdet_dtype(self.means)
        d = self.off_diagonal.shape[-1]
        eps = torch.randn(
            (batch_size, d, 1), generator=generator, device=self.means.device, dtype=dtype
        )
        if self.tails:
            df = torch.exp(self.log_df[:k].detach().to(dtype))[which]
            eps = eps / torch.sqrt(chi_square(df, generator) / df)[:, None, None]
        draws = (self.scale_tril(dtype).detach()[which] @ eps).squeeze(-1)
        mean = self.means[:k].detach()[which].to(dtype)
        return mean + temperature * draws.view_as(mean)
