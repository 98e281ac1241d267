r"""Layers of a conditional density $p(x \mid c)$: the context `c` enters
every coupling network and the prior through one shared encoder.

- `ContextEncoder`: `(B, C) -> (B, E)`, an MLP of the standardised
  context, run once per batch and shared by every layer below.
- `ContextCoupling`: the affine coupling of
  `glow_train.flows.coupling` whose conditioner reads `[x_a, h]` (`h` the
  encoding): $z_b = (x_b + t(x_a, h))\,\sigma(s(x_a, h) + 2)$,
  $\log|\det J| = \sum \log\sigma(s + 2)$; for a single dimension (`x_a`
  empty) it is an affine map of `x` whose shift and scale depend on `h` alone.
  With `kind="spline"` the conditioner gives the parameters of a
  rational-quadratic spline of each value of `x_b` instead
  (`rational_quadratic`), so even a single
  dimension has a non-Gaussian conditional density.
- `ContextPrior`: $\mathcal N(\mu(h), \mathrm{diag}\,e^{2\rho(h)})$,
  from a zero-initialised linear layer, so it starts as $\mathcal N(0, I)$;
  or Student-t's of that location and scale (`model.prior=student_t`).

For a fixed context each layer is invertible in `x`, so the change of variables
gives $\log p(x \mid c) = \log p_Z(f(x; c) \mid c) + \log|\det \partial f / \partial x|$
(Winkler et al. 2019, "Learning likelihoods with conditional normalizing flows").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glow_train.flows.base import deinterleave, logdet_dtype
from glow_train.flows.conditioner import ACTIVATIONS, ZeroInit, mlp_conditioner
from glow_train.flows.priors import (
    INITIAL_DF,
    gaussian_log_prob,
    student_t_log_prob,
    student_t_noise,
)
from glow_train.flows.spline import spline_parameters, spline_transform

__all__ = ["ContextEncoder", "ContextCoupling", "ContextPrior"]


class ContextEncoder(nn.Sequential):
    """`(B, C)` context -> `(B, E)` features: Linear → activation, twice.

    With `magnitudes`, the first layer reads `[c, |c|]` (`(B, 2C)`): the size of
    recent moves, which carries volatility clustering, is then one layer away instead
    of a function the network must first learn to fold."""

    def __init__(
        self, in_features: int, features: int, activation: str = "relu", magnitudes: bool = False
    ):
        act = ACTIVATIONS[activation]
        width = 2 * in_features if magnitudes else in_features
        super().__init__(nn.Linear(width, features), act(), nn.Linear(features, features), act())
        self.magnitudes = magnitudes

    def forward(self, context: Tensor) -> Tensor:
        """Features `h` `(B, E)` of the context `(B, C)` (its magnitudes appended when asked)."""
        if self.magnitudes:
            context = torch.cat([context, context.abs()], dim=1)
        return super().forward(context)


class ContextCoupling(nn.Module):
    """Affine or spline coupling of `(B, D)` given context features `h` `(B, E)`.

    Args:
        num_features: `D` (1 or more; `D // 2` dimensions condition the rest).
        context_features: `E`.
        hidden_features: the conditioner's width (`mlp_conditioner`).
        mlp: the conditioner's other options (`mlp_conditioner`).
        kind: `"affine"` or `"spline"`.
        spline: `bins` and `bound` of the spline (`kind="spline"`).
    """

    def __init__(
        self,
        num_features: int,
        context_features: int,
        hidden_features: int,
        mlp: dict,
        kind: str = "affine",
        spline: dict | None = None,
    ):
        super().__init__()
        if kind not in ("affine", "spline"):
            raise ValueError(f"a context coupling is affine or spline, got {kind!r}")
        self.split = num_features // 2
        self.kind = kind
        changed = num_features - self.split
        if kind == "spline":
            self.bins, self.bound = int(spline["bins"]), float(spline["bound"])
            out = changed * spline_parameters(self.bins)
        else:
            out = 2 * changed
        self.net = mlp_conditioner(self.split + context_features, hidden_features, out, **mlp)

    def _spline(self, x_a: Tensor, x_b: Tensor, h: Tensor, inverse: bool):
        params = self.net(torch.cat([x_a, h.to(x_a.dtype)], dim=1))
        return spline_transform(x_b, params, self.bound, inverse)

    def _shift_and_log_scale(self, x_a: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(torch.cat([x_a, h.to(x_a.dtype)], dim=1)).to(x_a.dtype)
        shift, raw = deinterleave(out)
        return shift, F.logsigmoid(raw.to(logdet_dtype(x_a)) + 2.0)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """`(x (B, D), h (B, E)) -> (z (B, D), log|det dz/dx| (B,))`."""
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        if self.kind == "spline":
            z_b, logdet = self._spline(x_a, x_b, h, inverse=False)
            return torch.cat([x_a, z_b], dim=1), logdet
        shift, log_scale = self._shift_and_log_scale(x_a, h)
        z_b = (x_b + shift) * log_scale.exp().to(x.dtype)
        return torch.cat([x_a, z_b], dim=1), log_scale.sum(dim=1)

    def inverse(self, z: Tensor, h: Tensor) -> Tensor:
        """`x` from `z` given the context features `h`."""
        z_a, z_b = z[:, : self.split], z[:, self.split :]
        if self.kind == "spline":
            return torch.cat([z_a, self._spline(z_a, z_b, h, inverse=True)[0]], dim=1)
        shift, log_scale = self._shift_and_log_scale(z_a, h)
        return torch.cat([z_a, z_b * torch.exp(-log_scale).to(z.dtype) - shift], dim=1)


class ContextPrior(nn.Module):
    """Diagonal Gaussian over `(B, D)` whose mean and log-scale are linear in `h`
    (zero-initialised: N(0, I) until trained); with `student_t=True`, independent
    Student-t's of the same location and scale and one learned degrees of freedom per
    dimension (`student_t_log_prob`)."""

    def __init__(self, num_features: int, context_features: int, student_t: bool = False):
        super().__init__()
        self.num_features = num_features
        self.params = ZeroInit(nn.Linear(context_features, 2 * num_features))
        if student_t:
            self.log_df = nn.Parameter(torch.full((num_features,), math.log(INITIAL_DF)))
        else:
            self.log_df = None

    def mean_and_log_scale(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """`(mean, log_scale)`, each `(B, D)`, from the context features `h`."""
        mean, log_scale = self.params(h).chunk(2, dim=1)
        return mean, log_scale

    def log_prob(self, z: Tensor, h: Tensor) -> Tensor:
        """Per-item log-density in at least float32, `(B,)`."""
        mean, log_scale = self.mean_and_log_scale(h)
        if self.log_df is not None:
            return student_t_log_prob(z, mean, log_scale, self.log_df)
        return gaussian_log_prob(z, mean, log_scale)

    def sample(
        self, h: Tensor, temperature: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """One draw per row of `h`, the scale multiplied by `temperature`."""
        mean, log_scale = self.mean_and_log_scale(h)
        if self.log_df is not None:
            df = torch.exp(self.log_df.to(mean.dtype))
            eps = student_t_noise(df, mean.shape, generator)
        else:
            eps = torch.randn(mean.shape, generator=generator, device=h.device, dtype=mean.dtype)
        return mean + temperature * torch.exp(log_scale) * eps
