r"""Rational-quadratic spline coupling (Durkan et al. 2019, "Neural Spline Flows").

Each changed coordinate passes through a monotone map $g$ made of `K`
rational-quadratic pieces on $[-B, B]$ and the identity outside it. The
conditioner gives, per coordinate, `K` bin widths, `K` bin heights and `K - 1`
interior derivatives; the knots $(x^{(k)}, y^{(k)})$ are their cumulative sums on
$[-B, B]$ and the derivatives at $\pm B$ are 1, so $g$ joins the
identity tails smoothly. In bin `k`, with $w_k, h_k$ its width and height,
$s_k = h_k / w_k$, $\xi = (x - x^{(k)}) / w_k \in [0, 1]$ and
$d_k, d_{k+1}$ the derivatives at its ends:

$$
g(x) = y^{(k)} + \frac{h_k\,[s_k \xi^2 + d_k \xi(1 - \xi)]}
                      {s_k + (d_{k+1} + d_k - 2 s_k)\,\xi(1 - \xi)},
$$

$$
g'(x) = \frac{s_k^2\,[d_{k+1} \xi^2 + 2 s_k \xi(1 - \xi) + d_k (1 - \xi)^2]}
             {[s_k + (d_{k+1} + d_k - 2 s_k)\,\xi(1 - \xi)]^2}.
$$

The inverse solves the quadratic in $\xi$ that $g(x) = y$ becomes, with the
root $\xi = 2c / (-b - \sqrt{b^2 - 4ac})$ (the stable form of the one in
$[0, 1]$). With zero raw parameters the bins are equal and every derivative is
1, so $g$ is the identity: a coupling whose conditioner ends in a
zero-initialised layer starts as the identity map, as the affine coupling does.

The spline's arithmetic and the log-determinant run in at least float32 whatever the
stream's dtype (bf16 under autocast): the knots are cumulative sums, where bf16's
8 bits of mantissa would misplace them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from glow_train.flows.base import Flow, logdet_dtype, split_channels
from glow_train.flows.conditioner import mlp_conditioner

__all__ = [
    "SplineCoupling",
    "check_spline",
    "rational_quadratic",
    "spline_parameters",
    "spline_transform",
]

MIN_BIN = 1e-3  # the smallest bin width and height, as a fraction of 2B
MAX_BINS = 256  # well below 1 / MIN_BIN, where the floors alone would fill the interval
MIN_DERIVATIVE = 1e-3
_DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))  # softplus(0 + shift) = 1 - min


def check_spline(bins: int, bound: float) -> None:
    """`2 <= bins <= MAX_BINS` and `bound > 0`, else a `ValueError` naming the
    model option (`spline_bins`, `spline_bound`)."""
    if not 2 <= int(bins) <= MAX_BINS:
        raise ValueError(f"spline_bins must be in 2..{MAX_BINS}, got {bins}")
    if not float(bound) > 0:
        raise ValueError(f"spline_bound must be > 0, got {bound}")


def spline_parameters(bins: int) -> int:
    """Raw parameters per coordinate: `K` widths, `K` heights, `K - 1` derivatives."""
    return 3 * bins - 1


def _knots(raw: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Raw sizes `(..., K)` -> knot positions `(..., K + 1)` from `-B` to `B`
    and the bin sizes `(..., K)`, each at least `MIN_BIN * 2B`."""
    bins = raw.shape[-1]
    sizes = MIN_BIN + (1.0 - MIN_BIN * bins) * torch.softmax(raw, dim=-1)
    inner = torch.cumsum(sizes, dim=-1)[..., :-1] * (2 * bound) - bound
    ends = inner.new_full((*inner.shape[:-1], 1), bound)
    knots = torch.cat([-ends, inner, ends], dim=-1)
    return knots, knots[..., 1:] - knots[..., :-1]


def _derivatives(raw: Tensor) -> Tensor:
    """Raw interior derivatives `(..., K - 1)` -> all `K + 1` (1 at both ends)."""
    inner = MIN_DERIVATIVE + F.softplus(raw + _DERIVATIVE_SHIFT)
    ones = inner.new_ones((*inner.shape[:-1], 1))
    return torch.cat([ones, inner, ones], dim=-1)


def _gather(values: Tensor, index: Tensor) -> Tensor:
    return values.gather(-1, index.unsqueeze(-1)).squeeze(-1)


def rational_quadratic(
    x: Tensor, raw: Tensor, bound: float, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    r"""The spline $g$ (or $g^{-1}$) applied elementwise.

    Args:
        x: the input, any shape `S`, in at least float32.
        raw: the conditioner's output for it, `S + (3K - 1,)`: `K` raw widths, then
            `K` raw heights, then `K - 1` raw interior derivatives (used in `x`'s
            dtype).
        bound: `B`; outside `[-B, B]` the map is the identity.
        inverse: apply $g^{-1}$ instead.

    Returns:
        `(g(x), log g'(x))` (inverse: `(g^{-1}(x), -log g'(g^{-1}(x)))`), both of
        shape `S`; the log-derivative is 0 outside `[-B, B]`.
    """
    bins = (raw.shape[-1] + 1) // 3
    raw = raw.to(x.dtype)
    xk, widths = _knots(raw[..., :bins], bound)
    yk, heights = _knots(raw[..., bins : 2 * bins], bound)
    d = _derivatives(raw[..., 2 * bins :])
    inside = (x > -bound) & (x < bound)
    xc = x.clamp(-bound, bound)
    knots = yk if inverse else xk
    index = (xc.unsqueeze(-1) >= knots[..., 1:-1]).sum(dim=-1)  # the bin, 0..K-1
    x0, w, y0, h = (_gather(t, index) for t in (xk, widths, yk, heights))
    d0, d1 = _gather(d[..., :-1], index), _gather(d[..., 1:], index)
    s = h / w
    if inverse:
        dy = xc - y0
        delta = d1 + d0 - 2 * s
        a = h * (s - d0) + dy * delta
        b = h * d0 - dy * delta
        c = -s * dy
        root = torch.sqrt((b * b - 4 * a * c).clamp_min(0))
        xi = (2 * c / (-b - root)).clamp(0, 1)
        out = x0 + xi * w
    else:
        xi = ((xc - x0) / w).clamp(0, 1)
    one_minus = 1 - xi
    denominator = s + (d1 + d0 - 2 * s) * xi * one_minus
    if not inverse:
        out = y0 + h * (s * xi * xi + d0 * xi * one_minus) / denominator
    numerator = s * s * (d1 * xi * xi + 2 * s * xi * one_minus + d0 * one_minus * one_minus)
    log_derivative = torch.log(numerator) - 2 * torch.log(denominator)
    if inverse:
        log_derivative = -log_derivative
    out = torch.where(inside, out, x)
    return out, torch.where(inside, log_derivative, torch.zeros_like(log_derivative))


def spline_transform(
    x_b: Tensor, params: Tensor, bound: float, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    """A coupling's changed half through its splines: `x_b` `(B, C)` and the
    conditioner's output `params` `(B, C * (3K - 1))` -> (the result in `x_b`'s
    dtype, the log-determinant `(B,)` summed in at least float32).
    `rational_quadratic` runs in that float32-or-wider dtype."""
    dtype = logdet_dtype(x_b)
    raw = params.to(dtype).unflatten(1, (x_b.shape[1], -1))
    out, log_derivative = rational_quadratic(x_b.to(dtype), raw, bound, inverse)
    return out.to(x_b.dtype), log_derivative.sum(dim=1)


class SplineCoupling(Flow):
    r"""Rational-quadratic spline coupling over dimension 1 of `(B, D)`
    (`model.coupling=spline`, the 1-D Glow).

    $x_a$ (the first `D // 2` values) passes unchanged; each value of
    $x_b$ goes through its own spline $g_{\theta(x_a)}$, whose
    $3K - 1$ parameters an MLP of $x_a$ gives:
    $z_b = g_{\theta(x_a)}(x_b)$,
    $\log|\det J| = \sum_i \log g'_{\theta(x_a), i}(x_{b,i})$.

    Args:
        num_features: `D` (at least 2).
        hidden_features: width of the MLP conditioner.
        bins: `K`, the spline's pieces (`model.spline_bins`).
        bound: `B`: the spline acts on `[-B, B]`, the identity outside
            (`model.spline_bound`; the 1-D Glow's inputs are standardised).
        mlp: options of `mlp_conditioner`.
    """

    def __init__(
        self,
        num_features: int,
        hidden_features: int,
        bins: int,
        bound: float,
        mlp: dict | None = None,
    ):
        super().__init__()
        if num_features < 2:
            raise ValueError(f"coupling needs at least 2 features, got {num_features}")
        check_spline(bins, bound)
        self.split = num_features // 2
        self.bins, self.bound = int(bins), float(bound)
        changed = num_features - self.split
        self.net = mlp_conditioner(
            self.split, hidden_features, changed * spline_parameters(bins), **(mlp or {})
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(z, logdet)`: the second part splined with knots computed from the first."""
        x_a, x_b = split_channels(x, self.split)
        z_b, logdet = spline_transform(x_b, self.net(x_a), self.bound)
        return torch.cat([x_a, z_b], dim=1), logdet

    def inverse(self, z: Tensor) -> Tensor:
        """`x` from `z`: the inverse spline, with the same knots (the first part is unchanged)."""
        z_a, z_b = split_channels(z, self.split)
        x_b, _ = spline_transform(z_b, self.net(z_a), self.bound, inverse=True)
        return torch.cat([z_a, x_b], dim=1)
