"""1-D Glow for vectors: K × [ActNorm, LU linear map, MLP coupling], no squeeze;
with a context, the conditional density of a window given the values before it."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from glow_train.config import Glow1DConfig
from glow_train.data.spec import DataSpec
from glow_train.flows import FlowStep, FlowSteps, LearnedPrior
from glow_train.flows.actnorm import ActNorm
from glow_train.flows.context import ContextCoupling, ContextEncoder, ContextPrior
from glow_train.flows.invconv import InvertibleLinear
from glow_train.flows.mixture import MixturePrior
from glow_train.flows.priors import PRIORS, StudentTPrior
from glow_train.flows.recursion import GJRMemory
from glow_train.flows.spline import check_spline
from glow_train.models.base import FlowModel, check_coupling, check_positive
from glow_train.models.memory import initialize_memory

__all__ = ["Glow1D"]


class Glow1D(FlowModel):
    r"""Glow for vectors `(B, D)` (`model=glow1d`).

    The same steps of flow as `glow_train.Glow` with dense layers: ActNorm
    per feature, an invertible linear map, an MLP coupling; one learned prior on
    the output (`prior`: a Gaussian, Student-t tails, or a mixture). Every
    hyperparameter is required (the config group's YAML holds the defaults).

    Args:
        dim: `D` (at least 2; from the dataset).
        K: number of steps.
        hidden_features: width of the MLP conditioners.
        coupling: `"affine"`, `"additive"` or `"spline"` (rational-quadratic,
            `glow_train.flows.spline`).
        hidden_layers: hidden layers per MLP conditioner.
        activation: `relu`, `elu`, `gelu` or `tanh`.
        dropout: dropout probability after each hidden layer (training mode only).
        lu: LU-parameterised linear maps.
        spline_bins: the spline coupling's pieces (`coupling="spline"` only).
        spline_bound: `B`: the splines act on `[-B, B]`, the identity outside.
        context_magnitudes: the context encoder reads `|c|` beside `c`
            (`ContextEncoder`).
        prior: `"gaussian"`, or `"student_t"`: the learned prior's location and
            scale with Student-t tails, a learned degrees of freedom per dimension
            (`StudentTPrior`); or `"mixture"`: a
            mixture of `prior_components` learned full-covariance Gaussians, or
            `"mixture_t"`: of multivariate Student-t's
            (`MixturePrior`; unconditional models).
        num_classes: if > 0, the prior is class-conditional.
        context_dims: if > 0, the model is $p(x \mid c)$: its input `(B, C + D)`
            holds the context `c` (the first `C` values, e.g. the steps before a
            window of a series, standardised) and then `x`; `log_prob` is that of
            `x` given `c` and `num_dims` is `D`. One shared encoder of `c`
            (`ContextEncoder`, `hidden_features`
            wide) feeds every coupling network and the prior's mean and scale
            (`glow_train.flows.context`). With `D = 1` and affine couplings
            the conditional density is a Gaussian; spline couplings (or `D > 1`)
            are not restricted to one.
        memory: with a context, `M` > 0 more values of the past before the context
            (`NaN` before the series' start): the input is `(B, (M + C)·c + D)`, the
            window is standardised by a GJR-GARCH(1,1) volatility computed over the
            whole past (`glow_train.flows.recursion.GJRMemory`), and the encoder
            reads the context standardised by it with the log-volatilities of
            `recursions` recursions; at initialisation (`initialize`) the model is the
            maximum-likelihood GJR-GARCH(1,1)-t (or Gaussian) of the batch.
        series_columns: `c`, the series' columns (with `memory`).
        recursions: `R`, the GJR recursions (with `memory`; at least 1).
    """

    name = "glow1d"
    schema = Glow1DConfig

    def __init__(
        self,
        dim: int,
        K: int,
        hidden_features: int,
        coupling: str,
        lu: bool,
        num_classes: int = 0,
        hidden_layers: int = 2,
        activation: str = "relu",
        dropout: float = 0.0,
        context_dims: int = 0,
        spline_bins: int = 8,
        spline_bound: float = 4.0,
        prior: str = "gaussian",
        prior_components: int = 8,
        context_magnitudes: bool = False,
        memory: int = 0,
        series_columns: int = 1,
        recursions: int = 1,
    ):
        super().__init__()
        check_positive(K=K, hidden_features=hidden_features, hidden_layers=hidden_layers)
        check_coupling(coupling, vectors=True)
        check_spline(spline_bins, spline_bound)  # checked whatever the coupling: a typo
        check_positive(prior_components=prior_components)  # is refused, never ignored
        if dim < (1 if context_dims > 0 else 2):
            raise ValueError(f"dim must be at least 2 (1 with a context), got {dim}")
        self.config = dict(
            dim=dim,
            K=K,
            hidden_features=hidden_features,
            coupling=coupling,
            lu=lu,
            num_classes=num_classes,
            hidden_layers=hidden_layers,
            activation=activation,
            dropout=float(dropout),
        )
        if context_dims > 0:  # recorded only when set: older checkpoints rebuild unchanged
            self.config["context_dims"] = int(context_dims)
            if context_magnitudes:
                self.config["context_magnitudes"] = True
            if memory > 0:
                check_positive(recursions=recursions, series_columns=series_columns)
                self.config |= dict(
                    memory=int(memory),
                    series_columns=int(series_columns),
                    recursions=int(recursions),
                )
        spline = dict(bins=int(spline_bins), bound=float(spline_bound))
        if coupling == "spline":  # likewise
            self.config |= dict(spline_bins=spline["bins"], spline_bound=spline["bound"])
        if prior not in PRIORS:
            raise ValueError(f"unknown prior {prior!r}; choose one of {', '.join(PRIORS)}")
        if prior != "gaussian":  # likewise
            self.config["prior"] = prior
        mixture = prior in ("mixture", "mixture_t")
        if mixture:
            if num_classes > 0 or context_dims > 0:
                raise ValueError(
                    f"prior={prior} is for unconditional models; a model given a context "
                    "(dataset.context) or classes takes prior=gaussian or student_t"
                )
            self.config["prior_components"] = int(prior_components)
        student_t = prior == "student_t"
        self.num_dims = dim
        self.num_classes = num_classes
        self.context_dims = int(context_dims)
        self.memory = None
        mlp = dict(hidden_layers=hidden_layers, activation=activation, dropout=float(dropout))
        if self.context_dims > 0:
            if num_classes > 0:
                raise ValueError("a model with a context has no class-conditional prior")
            if coupling not in ("affine", "spline"):
                raise ValueError(
                    f"a model with a context takes affine or spline couplings, not {coupling!r}"
                )
            width = hidden_features
            encoded = self.context_dims
            if memory > 0:
                if context_dims % series_columns or dim % series_columns:
                    raise ValueError(
                        f"context_dims={context_dims} and dim={dim} are not whole steps of "
                        f"{series_columns} columns"
                    )
                self.memory = GJRMemory(series_columns, recursions, context_dims // series_columns)
                self.context_dims += int(memory) * series_columns
                encoded = recursions * series_columns  # the log-volatilities
            self.encoder = ContextEncoder(
                encoded, width, activation, magnitudes=bool(context_magnitudes)
            )
            self.steps = nn.ModuleList(
                nn.ModuleList(
                    [
                        ActNorm(dim),
                        InvertibleLinear(dim, lu=lu),
                        ContextCoupling(dim, width, width, mlp, coupling, spline),
                    ]
                )
                for _ in range(K)
            )
            self.prior = ContextPrior(dim, width, student_t=student_t)
            return
        self.flow = FlowSteps(
            FlowStep(dim, hidden_features, coupling, lu, dense=True, mlp=mlp, spline=spline)
            for _ in range(K)
        )
        if mixture:
            self.prior = MixturePrior((dim,), int(prior_components), tails=prior == "mixture_t")
        else:
            prior_class = StudentTPrior if student_t else LearnedPrior
            self.prior = prior_class((dim,), num_classes=num_classes)

    @classmethod
    def for_data(cls, spec: DataSpec, options: dict[str, Any]) -> Glow1D:
        """`dim` from a vector spec; `options` are `model.*`."""
        if spec.kind != "vector":
            raise ValueError(f"model=glow1d needs vector data, got {spec.kind} data")
        context = spec.context_dims
        memory = int(spec.memory or 0) if spec.context else 0
        if memory:
            options |= dict(memory=memory, series_columns=max(len(spec.series), 1))
        else:
            options.pop("recursions", None)
        recent = context - memory * max(len(spec.series), 1)
        return cls(dim=spec.num_dims - context, context_dims=recent, **options)

    @torch.no_grad()
    def initialize(self, x: Tensor, y: Tensor | None = None) -> None:
        """ActNorm's data-dependent initialisation, then a mixture prior's from the
        latents of the same batch (`MixturePrior.initialize`)."""
        if self.memory is not None and not self.is_initialized:
            initialize_memory(self, x)
            return
        super().initialize(x, y)
        if isinstance(self.prior, MixturePrior):
            self.prior.initialize(self.flow(x)[0])

    def _condition(self, past: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """The given values `(B, context_dims)` -> `(h (B, E), state)`: with `memory`,
        the state is the location `(B, c)` and the log-volatilities `(B, R, c)`
        (`GJRMemory`), and `h` encodes the log-volatilities; else `None`."""
        if self.memory is None:
            return self.encoder(past), None
        past = past.reshape(len(past), -1, self.memory.columns)
        log_sigma = self.memory(past)  # (B, R, c)
        h = self.encoder(log_sigma.flatten(1).to(past.dtype))
        return h, (self.memory.location(past), log_sigma)

    def split_context(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """`(B, C + D)` -> `(context features h (B, E), x (B, D), log|det|)`: with
        `memory`, `x` standardised by the location and the first recursion's volatility
        and the log-determinant of that `(B,)`, else `x` itself and `None`."""
        h, state = self._condition(x[:, : self.context_dims])
        x = x[:, self.context_dims :]
        if state is None:
            return h, x, None
        eps, logdet = self.memory.standardize(x.reshape(len(x), -1, self.memory.columns), *state)
        return h, eps.flatten(1), logdet

    def forward_given(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """`x (B, D)` given `h` -> `(z (B, D), log|det J| (B,))`."""
        logdet = x.new_zeros(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32))
        for norm, mix, coupling in self.steps:
            x, ld_norm = norm(x)
            x, ld_mix = mix(x)
            x, ld_coupling = coupling(x, h)
            logdet = logdet + ld_norm + ld_mix + ld_coupling
        return x, logdet

    def _inverse_given(self, z: Tensor, h: Tensor) -> Tensor:
        for norm, mix, coupling in reversed(self.steps):
            z = norm.inverse(mix.inverse(coupling.inverse(z, h)))
        return z

    def _encode_given(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`(B, C + D)` -> `(z (B, D), log|det J| (B,), h)`."""
        h, x, given = self.split_context(x)
        z, logdet = self.forward_given(x, h)
        return z, logdet if given is None else logdet + given, h

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`(B, D)` → `(z (B, D), log|det J| (B,))` (with a context: `(B, C + D)`
        in, `z` of the `D` values given the context)."""
        if self.context_dims > 0:
            return self._encode_given(x)[:2]
        return self.flow(x)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Per-vector log-density in nats, shape `(B,)` (with a context: of the last
        `D` values given the first `C`)."""
        if self.context_dims > 0:
            z, logdet, h = self._encode_given(x)
            return self.prior.log_prob(z, h) + logdet
        z, logdet = self.flow(x)
        return self.prior.log_prob(z, y) + logdet

    def class_log_probs(self, x: Tensor) -> Tensor:
        r"""$\log p(x \mid y=k)$ for every class `k`, `(B, num_classes)`: one
        pass of the flow, one evaluation of the prior per class."""
        self.require_classes()
        z, logdet = self.flow(x)
        columns = [
            self.prior.log_prob(z, self.class_column(z, k)) + logdet
            for k in range(self.num_classes)
        ]
        return torch.stack(columns, dim=1)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """`x` from the latent `z` (the flow's `inverse`).

        A model with a context decodes with `sample_given` instead.
        """
        if self.context_dims > 0:
            raise ValueError("a model with a context decodes with sample_given(context)")
        return self.flow.inverse(z)

    @torch.no_grad()
    def sample_given(
        self, context: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """One draw of `x (B, D)` for each row of `context (B, C)` (standardised; with
        `memory`, `(B, (M + C)·c)`)."""
        if self.context_dims == 0:
            raise ValueError("this model has no context; use sample(n, temperature)")
        h, state = self._condition(context)
        x = self._inverse_given(self.prior.sample(h, temperature, generator), h)
        if state is None:
            return x
        return self.memory.unstandardize(x.reshape(len(x), -1, self.memory.columns), *state)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """`n` vectors `(n, D)`, the prior's std scaled by `temperature`."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if self.context_dims > 0:
            raise ValueError(
                "this model is conditional on a context: draw with sample_given(context) "
                "(glow-sample mode=forecast)"
            )
        return self.flow.inverse(self.prior.sample(n, y, temperature, generator))
