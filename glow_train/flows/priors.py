r"""Priors with learned parameters.

The image model's priors and the 1-D Glow's default are diagonal Gaussians
:math:`\mathcal N(\mu, \sigma^2)` with :math:`\sigma = e^{\log\sigma}` whose parameters
come from a context; the 1-D Glow can also take Student-t tails or a mixture:

- :class:`LearnedPrior`: free parameters of the latent's shape (the top of a Glow
  or a 1-D Glow), optionally shifted by a per-class offset (class-conditional).
- :class:`SplitPrior`: the factored-out half of a multi-scale level, conditioned on
  the kept half by a zero-initialised conv3×3 that predicts :math:`(\mu, \log\sigma)`.
- :class:`StudentTPrior`: :class:`LearnedPrior`'s location and scale with Student-t
  tails, one learned degrees of freedom :math:`\nu_i` per element (``model.prior=student_t``
  of the 1-D Glow): heavy-tailed data, such as returns, need no extreme stretch of the
  flow to reach their tails (Jaini et al. 2020, "Tails of Lipschitz triangular flows").
- :class:`MixturePrior`: a mixture of ``M`` learned diagonal Gaussians
  (``model.prior=mixture``): separated modes need no tearing of the flow.

For the Gaussians,
:math:`\log p(z) = \sum_i -\tfrac12\log 2\pi - \log\sigma_i - \tfrac12((z_i-\mu_i)/\sigma_i)^2`,
summed per sample in float32 (or float64 for float64 input); every prior sums in at
least float32. Sampling at temperature ``T`` draws :math:`z = \mu + T\sigma\epsilon`
with :math:`\epsilon` standard normal (standard Student-t for :class:`StudentTPrior`;
the mixture first draws a component): ``T`` multiplies every scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from glow_train.flows.base import autocast_off, deinterleave, logdet_dtype
from glow_train.flows.conditioner import ZeroInit

__all__ = [
    "gaussian_log_prob",
    "student_t_log_prob",
    "student_t_noise",
    "GaussianPrior",
    "LearnedPrior",
    "SplitPrior",
    "StudentTPrior",
    "MixturePrior",
    "PRIORS",
]

PRIORS = ("gaussian", "student_t", "mixture")  # the 1-D Glow's model.prior
INITIAL_DF = 10.0  # a Student-t prior's degrees of freedom before training

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(z: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Per-sample log-density of a diagonal Gaussian, summed over all but dim 0."""
    dtype = logdet_dtype(z)
    z, mean, log_scale = z.to(dtype), mean.to(dtype), log_scale.to(dtype)
    log_p = -_HALF_LOG_2PI - log_scale - 0.5 * ((z - mean) * torch.exp(-log_scale)) ** 2
    return log_p.sum(dim=tuple(range(1, log_p.dim())))  # no copy for channels_last


def student_t_log_prob(z: Tensor, mean: Tensor, log_scale: Tensor, log_df: Tensor) -> Tensor:
    r"""Per-sample log-density of independent Student-t's, summed over all but dim 0:
    :math:`\sum_i \log\Gamma(\tfrac{\nu_i+1}2) - \log\Gamma(\tfrac{\nu_i}2)
    - \tfrac12\log(\nu_i\pi) - \log\sigma_i - \tfrac{\nu_i+1}2\log(1 + e_i^2/\nu_i)`,
    :math:`e_i = (z_i - \mu_i)/\sigma_i`, :math:`\nu_i = e^{\text{log\_df}_i}`."""
    dtype = logdet_dtype(z)
    z, mean, log_scale = z.to(dtype), mean.to(dtype), log_scale.to(dtype)
    df = torch.exp(log_df.to(dtype))
    e = (z - mean) * torch.exp(-log_scale)
    log_p = (
        torch.lgamma((df + 1) / 2)
        - torch.lgamma(df / 2)
        - 0.5 * torch.log(df * math.pi)
        - log_scale
        - (df + 1) / 2 * torch.log1p(e * e / df)
    )
    return log_p.sum(dim=tuple(range(1, log_p.dim())))


def student_t_noise(
    df: Tensor, shape: torch.Size, generator: torch.Generator | None = None
) -> Tensor:
    r"""Standard Student-t draws of ``shape`` (``df`` broadcast to it):
    :math:`\epsilon / \sqrt{G / \nu}`, :math:`\epsilon \sim \mathcal N(0, 1)`,
    :math:`G \sim \chi^2_\nu`. The chi-square draws come from the global generator
    seeded from ``generator`` (PyTorch's gamma sampler takes none), so a seeded
    generator gives the same draws every time."""
    eps = torch.randn(shape, generator=generator, device=df.device, dtype=df.dtype)
    chi2 = torch.distributions.Chi2(df.expand(shape))
    if generator is None:
        return eps / torch.sqrt(chi2.sample() / df)
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[df.device] if df.device.type == "cuda" else []):
        torch.manual_seed(seed)
        draws = chi2.sample()
    return eps / torch.sqrt(draws / df)


class GaussianPrior(nn.Module):
    """Base class; subclasses define :meth:`params` from a context."""

    def params(self, context: Tensor | None, batch_size: int) -> tuple[Tensor, Tensor]:
        """Return ``(mean, log_scale)`` of shape ``(B, *latent_shape)``."""
        raise NotImplementedError  # pragma: no cover

    def log_density(self, z: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
        """Per-sample log-density of ``z`` at this location and scale (the shape of the
        distribution: Gaussian here)."""
        return gaussian_log_prob(z, mean, log_scale)

    def noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """Standard draws of ``like``'s shape, dtype and device (Gaussian here)."""
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        mean, log_scale = self.params(context, z.shape[0])
        return self.log_density(z, mean, log_scale)

    def sample(
        self,
        batch_size: int,
        context: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        mean, log_scale = self.params(context, batch_size)
        dtype = logdet_dtype(mean)
        mean, log_scale = mean.to(dtype), log_scale.to(dtype)
        return mean + temperature * torch.exp(log_scale) * self.noise(mean, generator)


class LearnedPrior(GaussianPrior):
    """Free ``(mean, log_scale)`` of shape ``shape``, zero-initialised (starts as N(0, I)).

    With ``num_classes > 0`` the context is a ``(B,)`` tensor of class labels, and a
    zero-initialised embedding adds a per-class offset to every element of both:
    row ``y`` of ``class_embedding`` (``2·numel(shape)`` wide) is the mean's offsets,
    then the log-scale's, each laid out as ``shape``. The paper's ``ycond`` has one
    offset per channel, broadcast over positions; that is the special case of equal
    offsets along each channel, and a checkpoint written with per-channel rows
    (before this layout) loads as exactly that. Per-element offsets matter when the
    top latent has few channels (the one-level digits model's has 4 of 4×4 maps).
    """

    def __init__(self, shape: tuple[int, ...], num_classes: int = 0):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.num_classes = num_classes
        if num_classes > 0:
            self.class_embedding = nn.Embedding(num_classes, 2 * math.prod(shape))
            nn.init.zeros_(self.class_embedding.weight)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "class_embedding.weight"
        weight = state_dict.get(key)
        shape = tuple(self.mean.shape)
        per_channel_width = 2 * shape[0]
        if (
            weight is not None
            and self.num_classes > 0
            and weight.shape[1] == per_channel_width != self.class_embedding.weight.shape[1]
        ):
            # per-channel rows (older checkpoints): the same offsets at every position
            per_channel = weight.view(weight.shape[0], per_channel_width, *([1] * (len(shape) - 1)))
            expanded = per_channel.expand(weight.shape[0], per_channel_width, *shape[1:])
            state_dict[key] = expanded.reshape(weight.shape[0], -1).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def params(self, context: Tensor | None, batch_size: int) -> tuple[Tensor, Tensor]:
        mean = self.mean.expand(batch_size, *self.mean.shape)
        log_scale = self.log_scale.expand(batch_size, *self.log_scale.shape)
        if self.num_classes > 0:
            if context is None:
                raise ValueError("this prior is class-conditional: pass the class labels y")
            offsets = self.class_embedding(context.long())  # (B, 2·numel(shape))
            offsets = offsets.view(batch_size, 2 * self.mean.shape[0], *self.mean.shape[1:])
            d_mean, d_log_scale = offsets.chunk(2, dim=1)
            mean, log_scale = mean + d_mean, log_scale + d_log_scale
        return mean, log_scale


class SplitPrior(GaussianPrior):
    """p(z_out | z_keep) with ``(mean, log_scale) = ZeroConv3x3(z_keep)``.

    Args:
        kept_channels: channels of the context ``z_keep``.
        out_channels: channels of the factored-out latent.
    """

    def __init__(self, kept_channels: int, out_channels: int):
        super().__init__()
        self.net = ZeroInit(nn.Conv2d(kept_channels, 2 * out_channels, 3, padding=1))

    def params(self, context: Tensor | None, batch_size: int) -> tuple[Tensor, Tensor]:
        with autocast_off(context):  # one conv per level: keep the prior in full precision
            h = self.net(context)
        return deinterleave(h)


class StudentTPrior(LearnedPrior):
    """:class:`LearnedPrior` (location, scale, class offsets) with Student-t tails: one
    learned ``log_df`` per element, starting at ``log(INITIAL_DF)``. Sampling at
    temperature ``T`` multiplies the scale by ``T``."""

    def __init__(self, shape: tuple[int, ...], num_classes: int = 0):
        super().__init__(shape, num_classes)
        self.log_df = nn.Parameter(torch.full(shape, math.log(INITIAL_DF)))

    def log_density(self, z: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
        return student_t_log_prob(z, mean, log_scale, self.log_df)

    def noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        df = torch.exp(self.log_df.to(like.dtype))
        return student_t_noise(df, like.shape, generator)


def _k_means(points: Tensor, m: int, iterations: int, gen: torch.Generator) -> Tensor:
    """``m`` centers of ``points`` ``(N, D)``: k-means++ seeding (each next center drawn
    with probability proportional to its squared distance from the chosen ones), then
    ``iterations`` Lloyd steps."""
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


class MixturePrior(nn.Module):
    r"""A mixture of ``M`` diagonal Gaussians over ``(B, *shape)`` with learned weights,
    means and scales:
    :math:`\log p(z) = \operatorname{logsumexp}_m [\log\pi_m + \log\mathcal N(z; \mu_m,
    \operatorname{diag}\sigma_m^2)]`, the sum over components in at least float32.

    The means start at fixed, seeded draws from :math:`\mathcal N(0, I)`, the scales
    at 1 and the weights equal (equal means would keep the components equal under
    gradient descent); :meth:`initialize` then places them on k-means clusters of
    the first batch's latents, as ActNorm takes that batch's statistics.
    Unconditional only.
    """

    def __init__(self, shape: tuple[int, ...], components: int, seed: int = 0):
        super().__init__()
        if components < 1:
            raise ValueError(f"a mixture prior needs at least 1 component, got {components}")
        gen = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.means = nn.Parameter(torch.randn((components, *shape), generator=gen))
        self.log_scales = nn.Parameter(torch.zeros((components, *shape)))
        self.logits = nn.Parameter(torch.zeros(components))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, z: Tensor, iterations: int = 20, restarts: int = 4) -> None:
        """Data-dependent initialisation from latents ``z`` ``(N, *shape)`` (the flow's
        output on the first batch, as ActNorm's): k-means with k-means++ seeding (a
        fixed seed; the best of ``restarts``), then each component's mean,
        per-dimension scale and weight from its cluster. Does nothing once initialised
        (e.g. after loading a checkpoint)."""
        if bool(self.initialized):
            return
        points = z.reshape(z.shape[0], -1).double()
        m = self.means.shape[0]
        if points.shape[0] < 2 * m:
            self.initialized.fill_(1)  # too few points: keep the seeded draws
            return
        gen = torch.Generator(device=points.device).manual_seed(self.seed)
        best = None
        for _ in range(restarts):  # keep the restart with the smallest within-cluster spread
            centers = _k_means(points, m, iterations, gen)
            inertia = torch.cdist(points, centers).min(dim=1).values.square().sum()
            if best is None or inertia < best[0]:
                best = (inertia, centers)
        centers = best[1]
        assign = torch.cdist(points, centers).argmin(dim=1)
        spread = points.std(0)
        for k in range(m):
            members = points[assign == k]
            scale = members.std(0) if len(members) > 2 else spread
            self.log_scales[k] = (
                scale.clamp_min(1e-2 * spread.mean())
                .log()
                .view_as(self.log_scales[k])
                .to(self.log_scales.dtype)
            )
            self.means[k] = centers[k].view_as(self.means[k]).to(self.means.dtype)
            self.logits[k] = math.log(max(len(members), 1) / points.shape[0])
        self.initialized.fill_(1)

    def component_log_probs(self, z: Tensor) -> Tensor:
        """``log pi_m + log N(z; mu_m, sigma_m)`` for each item and component, ``(B, M)``."""
        columns = [
            gaussian_log_prob(z, mean.expand_as(z), log_scale.expand_as(z))
            for mean, log_scale in zip(self.means, self.log_scales, strict=True)
        ]
        weights = torch.log_softmax(self.logits.to(logdet_dtype(z)), dim=0)
        return torch.stack(columns, dim=1) + weights

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
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
        """A component per draw (by the weights), then its Gaussian with the scale
        multiplied by ``temperature``."""
        if context is not None:
            raise ValueError("a mixture prior is unconditional")
        probs = torch.softmax(self.logits.detach().float(), dim=0)
        which = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        mean, log_scale = self.means[which], self.log_scales[which]
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + temperature * torch.exp(log_scale) * eps
