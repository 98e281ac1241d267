r"""The mixture-of-logistics CDF coupling of Flow++ (Ho et al. 2019, section 3.2),
`model.coupling=logistic_mixture`.

As the affine coupling, the input is split along dimension 1 into `x_a` (passed
unchanged) and `x_b`. A conditioner of `x_a` gives, for every value $x$ of
`x_b`, an affine part $(a, b)$ and `K` logistic components (mixture logits
$\ell_k$, means $\mu_k$, log-scales $\log s_k$), and

$$
y = e^{a}\,\sigma^{-1}\big(F(x)\big) + b,\qquad
F(x) = \sum_{k=1}^{K} \pi_k\,\sigma\!\Big(\frac{x - \mu_k}{s_k}\Big),\quad
\pi = \mathrm{softmax}(\ell).
$$

$F$ is a CDF (increasing from 0 to 1), so $y$ is increasing in $x$ and the
coupling is invertible. With $u_k = (x - \mu_k)/s_k$, the log-derivative is

$$
\log\frac{\partial y}{\partial x} = a + \log f(x) - \log F(x) - \log\big(1 - F(x)\big),
\qquad f(x) = \sum_k \frac{\pi_k}{s_k}\,\sigma(u_k)\,\sigma(-u_k),
$$

and everything is computed in log space:
$\log F = \operatorname{logsumexp}_k(\log\pi_k + \log\sigma(u_k))$,
$\log(1 - F) = \operatorname{logsumexp}_k(\log\pi_k + \log\sigma(-u_k))$, so
$\sigma^{-1}(F) = \log F - \log(1 - F)$ needs no clamp of $F$ away from 0 and 1
(neither log underflows before $|u_k|$ passes float32's range).

**Identity at initialisation.** With a zero conditioner output every $\pi_k$ is
$1/K$, every $\mu_k = 0$, $s_k = 1$ and $a = b = 0$; then $F = \sigma$ and
$y = \sigma^{-1}(\sigma(x)) = x$: the coupling is exactly the identity, as the
zero-initialised last layer makes the affine coupling (nearly) one. Identical
components would receive identical gradients forever, though; the symmetry is
broken by the output scales of the conditioner's `ZeroInit` layer, which start at
$e^{\pm 1}$ (spread over the components) on the means' channels: the output is
still zero, but each component's mean then moves at its own rate.

**Bounds.** $a = 2\tanh(\tilde a / 2)$ keeps each coupling's scale in
$(e^{-2}, e^{2})$ (the unbounded $e^{\tilde a}$ can blow up early in training,
as in affine Glow); $\log s_k \ge -7$, as in Flow++.

**Inverse.** $\sigma^{-1}(F(x))$ lies between the smallest and the largest of
the components' $u_k$ (a convex combination of the $\sigma(u_k)$), so for the
target $t = (y - b)e^{-a}$ the solution lies in
$[\min_k(\mu_k + s_k t), \max_k(\mu_k + s_k t)]$. `mixture_inverse` starts at
the components' solutions averaged with the weights $\pi_k$ and takes Newton steps on
$\sigma^{-1}(F(x)) - t$ (its derivative is the closed form above), all values at
once; each step narrows the bracket by the sign of the residual. A Newton step is
replaced by the bracket's midpoint (bisection) when it would leave the bracket or go
more than half as far as the step before it (Newton on this sigmoid-shaped function
can otherwise jump back and forth between two points for ever), so it converges
whatever the mixture. It stops when every step (or bracket) is below
$10^{-6}(1 + |x|)$ in float32 ($10^{-12}(1 + |x|)$ in float64), at most
`MAX_ITERATIONS` steps; the values that have converged leave the loop, so the last
steps run on the few that remain.

**Precision.** The conditioner runs under autocast if it is on; its output is cast
once to float32 (float64 for a float64 stream), and the transform, its inverse and
the log-determinant are computed in that dtype; the result is cast back to the
stream's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from glow_train.flows.base import Flow, logdet_dtype, split_channels
from glow_train.flows.conditioner import ZeroInit
from glow_train.flows.conv_attention import image_conditioner

__all__ = [
    "LogisticMixtureCoupling",
    "MAX_ITERATIONS",
    "MAX_COMPONENTS",
    "mixture_forward",
    "mixture_inverse",
    "mixture_parameters",
]

MIN_LOG_SCALE = -7.0  # Flow++'s floor of the components' log-scales
AFFINE_BOUND = 2.0  # |a| < 2
MAX_ITERATIONS = 100
MAX_COMPONENTS = 256
MEAN_SCALE_SPREAD = 1.0  # the means' ZeroInit scales run from e^-1 to e^1


def mixture_parameters(components: int) -> int:
    """Raw parameters per changed value: `a`, `b`, then `K` logits, `K` means and
    `K` log-scales."""
    return 2 + 3 * components


def _unpack(raw: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Raw parameters on dimension `dim` -> `a`, `b` (that dimension dropped) and
    `log pi`, `mu`, `log s` (`K` long on it)."""
    k = (raw.shape[dim] - 2) // 3
    a = AFFINE_BOUND * torch.tanh(raw.select(dim, 0) / AFFINE_BOUND)
    log_pi = torch.log_softmax(raw.narrow(dim, 2, k), dim=dim)
    log_s = raw.narrow(dim, 2 + 2 * k, k).clamp_min(MIN_LOG_SCALE)
    return a, raw.select(dim, 1), log_pi, raw.narrow(dim, 2 + k, k), log_s


def mixture_forward(x: Tensor, raw: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """$y = e^a \\sigma^{-1}(F(x)) + b$ and $\\log \\partial y / \\partial x$, elementwise.

    Args:
        x: the values, any shape `S`, float32 or float64.
        raw: the conditioner's output for them, in `x`'s dtype: `S` with the
            `2 + 3K` parameters of each value inserted as dimension `dim` (the last by
            default; the coupling keeps them beside the channels, `(B, C, 2 + 3K, H, W)`,
            where the reductions over the components read contiguous memory).
        dim: the parameters' dimension of `raw`.

    Returns:
        `(y, log dy/dx)`, both of shape `S`.
    """
    dim = dim % raw.dim()
    a, b, log_pi, mu, log_s = _unpack(raw, dim)
    u = (x.unsqueeze(dim) - mu) * torch.exp(-log_s)
    log_up, log_down = F.logsigmoid(u), F.logsigmoid(-u)  # log sigma(u_k), log sigma(-u_k)
    log_f = torch.logsumexp(log_pi + log_up, dim=dim)  # log F
    log_1mf = torch.logsumexp(log_pi + log_down, dim=dim)  # log(1 - F)
    log_pdf = torch.logsumexp(log_pi + log_up + log_down - log_s, dim=dim)
    return torch.exp(a) * (log_f - log_1mf) + b, a + log_pdf - log_f - log_1mf


def mixture_inverse(y: Tensor, raw: Tensor, dim: int = -1) -> Tensor:
    """The `x` with `mixture_forward(x, raw, dim)[0] == y`, by Newton's method kept
    inside a bracket (see the module docstring for the bracket and the tolerance), in
    `y`'s dtype.

    The iterations work with $F$ and $1 - F$ themselves (each a sum of
    $\\pi_k\\sigma(\\pm u_k)$, so neither cancels) rather than their logarithms: fewer
    kernels than the log-space forward, and a value where either underflows gives
    a non-finite Newton step, which the bracket replaces by its midpoint."""
    if y.numel() == 0:
        return y.clone()
    # from here on, values in one flat row and parameters down the columns, `(2 + 3K, N)`
    # (one copy): sums over the components add whole rows, and converged values drop
    # out as columns
    columns = raw.movedim(dim % raw.dim(), 0).reshape(raw.shape[dim], -1)
    a, b, log_pi, mu, log_s = _unpack(columns, 0)
    target = (y.reshape(-1) - b) * torch.exp(-a)
    inv_s = torch.exp(-log_s)
    pi = log_pi.exp()
    ends = torch.addcdiv(mu, target, inv_s)  # mu_k + s_k t
    lo, hi = ends.amin(dim=0), ends.amax(dim=0)
    x = (pi * ends).sum(dim=0)  # the components' solutions, averaged: inside
    offset = -mu * inv_s
    tol = 1e-12 if y.dtype == torch.float64 else 1e-6
    out = x
    where = None  # the columns still iterating (None: all of them)
    last = hi - lo  # the size of the last step
    for _ in range(MAX_ITERATIONS):
        u = torch.addcmul(offset, x, inv_s)  # (K, N)
        up, down = torch.sigmoid(u), torch.sigmoid(u.neg_())
        weighted_up = pi * up
        cdf, rest = weighted_up.sum(dim=0), (pi * down).sum(dim=0)  # F, 1 - F
        slope = weighted_up.mul_(down).mul_(inv_s).sum(dim=0)  # f
        residual = torch.log(cdf) - torch.log(rest) - target
        above = residual > 0
        hi = torch.where(above, x, hi)
        lo = torch.where(above, lo, x)
        newton = x - residual * cdf * rest / slope
        # Newton where it lands in the bracket (a converged step may land on an end)
        # and goes at most half as far as the last step (no cycles) or under the
        # tolerance (round-off); else the midpoint
        scale = tol * (1 + x.abs())
        length = (newton - x).abs()
        newton_ok = (newton >= lo) & (newton <= hi) & (length <= torch.maximum(0.5 * last, scale))
        step = torch.where(newton_ok, newton, 0.5 * (lo + hi))
        last = (step - x).abs()
        # done: a step or bracket under the tolerance, or a NaN (an infinite value in)
        done = ~(torch.minimum(last, hi - lo) > scale)
        x = step
        if where is None:
            out = x
        else:
            out[where] = x
        converged = int(done.count_nonzero())
        if converged == x.numel():
            break
        if converged * 2 >= x.numel():  # drop the converged columns
            keep = (~done).nonzero().squeeze(-1)
            if where is None:
                out, where = out.clone(), keep
            else:
                where = where.index_select(0, keep)
            x, target, lo, hi, last = (t.index_select(0, keep) for t in (x, target, lo, hi, last))
            pi, inv_s, offset = (t.index_select(1, keep) for t in (pi, inv_s, offset))
    return out.reshape(y.shape)


def _spread_mean_scales(out: ZeroInit, changed: int, components: int) -> None:
    """Start the means' output scales at $e^{-1} \\ldots e^{1}$ over the components
    (the output stays zero; see "Identity at initialisation")."""
    spread = torch.linspace(-MEAN_SCALE_SPREAD, MEAN_SCALE_SPREAD, components)
    rows = out.log_scale.detach().view(changed, mixture_parameters(components))
    rows[:, 2 + components : 2 + 2 * components] = spread / out.log_scale_factor


class LogisticMixtureCoupling(Flow):
    """The Flow++ coupling over dimension 1 of `(B, C, H, W)` maps.

    Args:
        num_channels: `C` (at least 2).
        hidden_channels: width of the conditioner.
        components: `K`, the logistic components per value (`model.mixture_components`).
        dropout: the conditioner's dropout (training mode only).
        conditioner: `kind`, `blocks` and `heads` of `image_conditioner`.
    """

    #: `train.compile` compiles each coupling alone (`glow_train.training.compiling`)
    compile_region = True

    def __init__(
        self,
        num_channels: int,
        hidden_channels: int,
        components: int,
        dropout: float = 0.0,
        conditioner: dict | None = None,
    ):
        super().__init__()
        if num_channels < 2:
            raise ValueError(f"coupling needs at least 2 channels, got {num_channels}")
        if not 1 <= int(components) <= MAX_COMPONENTS:
            raise ValueError(f"mixture_components must be in 1..{MAX_COMPONENTS}, got {components}")
        self.split = num_channels // 2
        self.components = int(components)
        changed = num_channels - self.split
        self.net = image_conditioner(
            self.split,
            hidden_channels,
            changed * mixture_parameters(self.components),
            dropout,
            **(conditioner or {}),
        )
        last = self.net[-1] if isinstance(self.net, torch.nn.Sequential) else self.net.out
        _spread_mean_scales(last, changed, self.components)

    def _raw(self, x_a: Tensor) -> Tensor:
        """The conditioner's output as `(B, C_b, 2 + 3K, H, W)`, cast once to float32
        (float64 for a float64 stream)."""
        h = self.net(x_a).to(logdet_dtype(x_a))
        return h.unflatten(1, (-1, mixture_parameters(self.components)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(z, logdet)`: the second half through its mixture CDFs, logit and affine map."""
        x_a, x_b = split_channels(x, self.split)
        raw = self._raw(x_a)
        z_b, log_derivative = mixture_forward(x_b.to(raw.dtype), raw, dim=2)
        logdet = log_derivative.sum(dim=tuple(range(1, log_derivative.dim())))
        return torch.cat([x_a, z_b.to(x.dtype)], dim=1), logdet

    def inverse(self, z: Tensor) -> Tensor:
        """`x` from `z`: the same conditioner of the unchanged first half, the second
        half solved by bracketed Newton steps (`mixture_inverse`)."""
        z_a, z_b = split_channels(z, self.split)
        raw = self._raw(z_a)
        x_b = mixture_inverse(z_b.to(raw.dtype), raw, dim=2)
        return torch.cat([z_a, x_b.to(z.dtype)], dim=1)
