r"""Priors with learned parameters.

The image model's priors and the 1-D Glow model's own default (`model.prior=gaussian`;
the csv preset chooses another, `glow_train.flows.mixture`) are diagonal
Gaussians $\mathcal N(\mu, \sigma^2)$ with $\sigma = e^{\log\sigma}$ whose
parameters come from a context; the 1-D Glow can also take Student-t tails or a mixture:

- `LearnedPrior`: free parameters of the latent's shape (the top of a Glow
  or a 1-D Glow), optionally shifted by a per-class offset (class-conditional).
- `SplitPrior`: the factored-out half of a multi-scale level, conditioned on
  the kept half by a zero-initialised conv3×3 that predicts $(\mu, \log\sigma)$.
- `StudentTPrior`: `LearnedPrior`'s location and scale with Student-t
  tails, one learned degrees of freedom $\nu_i$ per element (`model.prior=student_t`
  of the 1-D Glow): heavy-tailed data, such as returns, need no extreme stretch of the
  flow to reach their tails (Jaini et al. 2020, "Tails of Lipschitz triangular flows").
- `MixturePrior` (its own module): a mixture of
  full-covariance Gaussians or multivariate t's (`model.prior=mixture|mixture_t`).

For the Gaussians,
$\log p(z) = \sum_i -\tfrac12\log 2\pi - \log\sigma_i - \tfrac12((z_i-\mu_i)/\sigma_i)^2$,
summed per sample in float32 (or float64 for float64 input); every prior sums in at
least float32. Sampling at temperature `T` draws $z = \mu + T\sigma\epsilon$
with $\epsilon$ standard normal (standard Student-t for `StudentTPrior`):
`T` multiplies every scale.
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
    "chi_square",
    "student_t_noise",
    "GaussianPrior",
    "LearnedPrior",
    "SplitPrior",
    "StudentTPrior",
    "PRIORS",
    "HALF_LOG_2PI",
]

PRIORS = ("gaussian", "student_t", "mixture", "mixture_t")  # the 1-D Glow's model.prior
INITIAL_DF = 10.0  # a Student-t prior's degrees of freedom before training

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def gaussian_log_prob(z: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Per-sample log-density of a diagonal Gaussian, summed over all but dim 0."""
    dtype = logdet_dtype(z)
    z, mean, log_scale = z.to(dtype), mean.to(dtype), log_scale.to(dtype)
    log_p = -HALF_LOG_2PI - log_scale - 0.5 * ((z - mean) * torch.exp(-log_scale)) ** 2
    return log_p.sum(dim=tuple(range(1, log_p.dim())))  # no copy for channels_last


def student_t_log_prob(z: Tensor, mean: Tensor, log_scale: Tensor, log_df: Tensor) -> Tensor:
    r"""Per-sample log-density of independent Student-t's, summed over all but dim 0:
    $\sum_i \log\Gamma(\tfrac{\nu_i+1}2) - \log\Gamma(\tfrac{\nu_i}2)
    - \tfrac12\log(\nu_i\pi) - \log\sigma_i - \tfrac{\nu_i+1}2\log(1 + e_i^2/\nu_i)$,
    $e_i = (z_i - \mu_i)/\sigma_i$, $\nu_i = e^{\text{log\_df}_i}$."""
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


def chi_square(df: Tensor, generator: torch.Generator | None = None) -> Tensor:
    r"""$\chi^2_\nu$ draws of `df`'s shape. They come from the global generator
    seeded from `generator` (PyTorch's gamma sampler takes none), so a seeded
    generator gives the same draws every time."""
    chi2 = torch.distributions.Chi2(df)
    if generator is None:
        return chi2.sample()
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[df.device] if df.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return chi2.sample()


def student_t_noise(
    df: Tensor, shape: torch.Size, generator: torch.Generator | None = None
) -> Tensor:
    r"""Standard Student-t draws of `shape` (`df` broadcast to it):
    $\epsilon / \sqrt{G / \nu}$, $\epsilon \sim \mathcal N(0, 1)$,
    $G \sim \chi^2_\nu$ (`chi_square`)."""
    eps = torch.randn(shape, generator=generator, device=df.device, dtype=df.dtype)
    return eps / torch.sqrt(chi_square(df.expand(shape), generator) / df)


class GaussianPrior(nn.Module):
    """Base class; subclasses define `params` from a context."""

    def params(self, context: Tensor | None, batch_size: int) -> tuple[Tensor, Tensor]:
        """Return `(mean, log_scale)` of shape `(B, *latent_shape)`."""
        raise NotImplementedError  # pragma: no cover

    def log_density(self, z: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
        """Per-sample log-density of `z` at this location and scale (the shape of the
        distribution: Gaussian here)."""
        return gaussian_log_prob(z, mean, log_scale)

    def noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """Standard draws of `like`'s shape, dtype and device (Gaussian here)."""
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Per-item log-density of `z` in nats, `(B,)`.

        `context`: the class labels (a class-conditional top prior) or the kept half of
        the level (a split prior); `None` for an unconditional prior.
        """
        mean, log_scale = self.params(context, z.shape[0])
        return self.log_density(z, mean, log_scale)

    def sample(
        self,
        batch_size: int,
        context: Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`batch_size` draws at `temperature` (the scale times it), given `context`."""
        mean, log_scale = self.params(context, batch_size)
        dtype = logdet_dtype(mean)
        mean, log_scale = mean.to(dtype), log_scale.to(dtype)
        return mean + temperature * torch.exp(log_scale) * self.noise(mean, generator)


class LearnedPrior(GaussianPrior):
    """Free `(mean, log_scale)` of shape `shape`, zero-initialised (starts as N(0, I)).

    With `num_classes > 0` the context is a `(B,)` tensor of class labels, and a
    zero-initialised embedding adds a per-class offset to every element of both:
    row `y` of `class_embedding` (`2·numel(shape)` wide) is the mean's offsets,
    then the log-scale's, each laid out as `shape`. The paper's `ycond` has one
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
        """`(mean, log_scale)`, learned; shifted per class (`context`: labels) if conditional."""
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
    """p(z_out | z_keep) with `(mean, log_scale) = ZeroConv3x3(z_keep)`.

    Args:
        kept_channels: channels of the context `z_keep`.
        out_channels: channels of the factored-out latent.
    """

    def __init__(self, kept_channels: int, out_channels: int):
        super().__init__()
        self.net = ZeroInit(nn.Conv2d(kept_channels, 2 * out_channels, 3, padding=1))

    def params(self, context: Tensor | None, batch_size: int) -> tuple[Tensor, Tensor]:
        """`(mean, log_scale)` from the kept half of the level (`context`), by the zero conv."""
        with autocast_off(context):  # one conv per level: keep the prior in full precision
            h = self.net(context)
        return deinterleave(h)


class StudentTPrior(LearnedPrior):
    """`LearnedPrior` (location, scale, class offsets) with Student-t tails: one
    learned `log_df` per element, starting at `log(INITIAL_DF)`. Sampling at
    temperature `T` multiplies the scale by `T`."""

    def __init__(self, shape: tuple[int, ...], num_classes: int = 0):
        super().__init__(shape, num_classes)
        self.log_df = nn.Parameter(torch.full(shape, math.log(INITIAL_DF)))

    def log_density(self, z: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
        """Student-t log-density with the learned degrees of freedom."""
        return student_t_log_prob(z, mean, log_scale, self.log_df)

    def noise(self, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """Standard Student-t draws of `like`'s shape with the learned degrees of freedom."""
        df = torch.exp(self.log_df.to(like.dtype))
        return student_t_noise(df, like.shape, generator)
