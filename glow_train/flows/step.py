r"""One step of flow, shared by the image and the vector model.

ActNorm followed by the invertible 1×1 convolution is one affine map per position,
$z = W\,\mathrm{diag}(s)\,(x + b) = W'(x + b)$ with
$W' = W\,\mathrm{diag}(s)$, so `FlowStep` applies both as one bias
addition and one matrix product (`channel_linear`)
instead of an addition, a multiplication and the product, and inverts them as one:
$x = \mathrm{diag}(1/s)\,W^{-1} z - b$. $W'$ is formed on the `C×C`
parameters, never on the activations; the bias is added before the product, as
ActNorm adds it (as $W'x + W'b$ the two terms would cancel when `|b|` is large
against the spread of `x`). The log-determinant is that of the two layers,
$N_\text{sp}(\sum_c \log s_c + \log|\det W|)$. The layers (and their state
dict) stay as they are; ActNorm's data-dependent initialisation runs them one by one,
and the memory-saving backward inverts the pair as one layer. Forward hooks on the
ActNorm and the 1×1 convolution do not fire (the step does not call them).

`FlowSteps` runs the `K` steps of a level and builds their folded matrices
in one batched computation (a dozen small operations for all `K`, not for each).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from glow_train.flows.actnorm import ActNorm
from glow_train.flows.base import (
    Flow,
    FlowSequence,
    autocast_off,
    channel_linear,
    logdet_dtype,
    positions,
)
from glow_train.flows.coupling import Coupling
from glow_train.flows.invconv import (
    InvertibleLinear,
    stacked_log_abs_det,
    stacked_weight_matrices,
)
from glow_train.flows.logistic_mixture import LogisticMixtureCoupling
from glow_train.flows.spline import SplineCoupling

__all__ = ["FlowStep", "FlowSteps"]


class _NormThenMix(Flow):
    """The ActNorm and 1×1 convolution of one `FlowStep` as one layer.

    Not a submodule of the step (the state dict keeps the two layers' own keys): the
    step holds it outside the module tree and runs it; the memory-saving backward
    inverts and recomputes it as one layer.
    """

    def __init__(self, norm: ActNorm, mix: InvertibleLinear):
        super().__init__()
        self.norm, self.mix = norm, mix

    def matrix(self, dtype: torch.dtype) -> Tensor:
        r"""The folded matrix $W\,\mathrm{diag}(e^{s})$, `(C, C)` in `dtype`."""
        with autocast_off(self.mix.log_s if self.mix.lu else self.mix.weight):
            return self.mix.weight_matrix(dtype) * self.norm.log_scale.to(dtype).exp()

    def apply(self, x: Tensor, w: Tensor) -> Tensor:
        """$z = W' (x + b)$ for the folded matrix `w` (autocast off)."""
        with autocast_off(x):
            # the bias first, as ActNorm adds it: folding it into the product as W'b
            # would subtract two large terms when |b| is large against x's spread
            return channel_linear(
                x + self.norm.per_channel(self.norm.bias, x).to(x.dtype), w.to(x.dtype)
            )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.apply(x, self.matrix(logdet_dtype(x)))
        return z, self.norm.logdet(x) + self.mix.logdet(x)

    @staticmethod
    def stacked(folds: list[_NormThenMix], x: Tensor) -> tuple[Tensor, Tensor]:
        """The matrices of `folds` as one `(K, C, C)` tensor and the sum of their
        log-determinants for `x`, shape `(B,)`, each in one batched computation."""
        dtype = logdet_dtype(x)  # of the matrices and the log-dets alike
        log_scales = torch.stack([f.norm.log_scale for f in folds])  # (K, C)
        mixes = [f.mix for f in folds]
        with autocast_off(x):
            w = stacked_weight_matrices(mixes, dtype) * log_scales.to(dtype).exp()[:, None, :]
        logdet = log_scales.to(dtype).sum() + stacked_log_abs_det(mixes).to(dtype)
        logdet = logdet * positions(x)
        return w, logdet.expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        inv = self.mix.inverse_matrix()  # float64; cached in eval mode
        if inv.is_inference() and not torch.is_inference_mode_enabled():
            inv = inv.clone()  # cached under inference mode: autograd may not save it
        with autocast_off(z):
            # diag(1/s) W^{-1}: row c scaled by exp(-log_scale_c)
            m = inv * torch.exp(-self.norm.log_scale.to(inv.dtype))[:, None]
            return channel_linear(z, m.to(z.dtype), -self.norm.bias.to(z.dtype))


class FlowStep(FlowSequence):
    """ActNorm → invertible 1×1 conv (a linear map on vectors) → coupling.

    Args:
        num_channels: `C` of `(B, C, H, W)` maps, or `D` of `(B, D)` vectors.
        hidden_channels: width of the coupling's conditioner.
        coupling: `"affine"`, `"additive"`, (`dense` only) `"spline"` or (images
            only) `"logistic_mixture"` (`LogisticMixtureCoupling`).
        lu: LU-parameterised channel mixing.
        dense: an MLP conditioner for vectors instead of convolutions.
        dropout: the convolutional conditioner's dropout (images).
        mlp: the MLP conditioner's options
            (see `mlp_conditioner`).
        spline: `bins` and `bound` of a `"spline"` coupling
            (`SplineCoupling`).
        conditioner: images: `kind`, `blocks` and `heads` of the conditioner
            (`image_conditioner`).
        components: `K` of a `"logistic_mixture"` coupling.
    """

    def __init__(
        self,
        num_channels: int,
        hidden_channels: int,
        coupling: str,
        lu: bool,
        dense: bool = False,
        mlp: dict | None = None,
        dropout: float = 0.0,
        spline: dict | None = None,
        conditioner: dict | None = None,
        components: int = 32,
    ):
        if coupling == "spline" and not dense:
            raise ValueError("the spline coupling is for vectors (dense=True)")
        if coupling == "logistic_mixture" and dense:
            raise ValueError("the logistic_mixture coupling is for images (dense=False)")
        # built in this order (the random initialisation of a seeded model depends on it)
        layers: list[Flow] = [ActNorm(num_channels), InvertibleLinear(num_channels, lu=lu)]
        if coupling == "spline":
            layers.append(SplineCoupling(num_channels, hidden_channels, mlp=mlp, **(spline or {})))
        elif coupling == "logistic_mixture":
            layers.append(
                LogisticMixtureCoupling(
                    num_channels, hidden_channels, components, dropout, conditioner
                )
            )
        else:
            layers.append(
                Coupling(
                    num_channels,
                    hidden_channels,
                    coupling,
                    dense=dense,
                    mlp=mlp,
                    dropout=dropout,
                    conditioner=conditioner,
                )
            )
        super().__init__(layers)

    def _fold(self) -> _NormThenMix:
        """The fold of this step's current ActNorm and 1×1 conv, built on first use (and
        again if either was replaced). Kept in `__dict__`, outside the module tree:
        no second copy of the two layers' parameters in the state dict."""
        fold = self.__dict__.get("_norm_then_mix")
        if fold is None or fold.norm is not self.flows[0] or fold.mix is not self.flows[1]:
            fold = _NormThenMix(*self.flows[:2])
            self.__dict__["_norm_then_mix"] = fold
        return fold

    def units(self) -> list[Flow]:
        """The folded ActNorm and 1×1 conv, then the coupling: the memory-saving backward
        inverts the pair as one layer."""
        return [self._fold(), self.flows[2]]

    def initializing(self) -> bool:
        """Whether the ActNorm takes its statistics from the next input (then the layers
        run one by one)."""
        norm = self.flows[0]
        return norm.pending_init

    def forward_plain(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(z, logdet)` with ActNorm folded into the 1×1 convolution (one matrix product)."""
        if self.initializing():
            return super().forward_plain(x)  # ActNorm takes its statistics from x first
        h, logdet = self._fold()(x)
        z, ld = self.flows[2](h)
        return z, logdet + ld

    def forward_given(self, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """`forward_plain` with the folded matrix `w` built by the caller, and
        without the fold's log-determinant (the caller has it): see `FlowSteps`."""
        return self.flows[2](self._fold().apply(x, w))

    def inverse(self, z: Tensor) -> Tensor:
        """`x` from `z`: the coupling's inverse, then the folded mix and normalisation's."""
        return self._fold().inverse(self.flows[2].inverse(z))


class FlowSteps(FlowSequence):
    r"""`K` `FlowStep` s on the same channels, run in order (a Glow level, the
    1-D Glow's flow); the state dict is that of a `FlowSequence`.

    The plain forward builds the `K` folded matrices $W_k\,\mathrm{diag}(e^{s_k})$
    in one batched computation, and their log-determinants in one sum
    (`stacked_weight_matrices`), then runs each step
    with its matrix: the same values as step by step up to rounding (equal to 1e-12
    in float64). ActNorm initialisation, a single step, steps that differ in width or
    parameterisation, a replaced step and a step with forward hooks run step by step
    (see `_batchable`), as does the memory-saving backward (one layer at a time
    by construction).
    """

    def __init__(self, steps: Iterable[FlowStep]):
        super().__init__(steps)
        if not all(isinstance(step, FlowStep) for step in self.flows):
            raise TypeError("FlowSteps holds FlowStep layers only")

    def _batchable(self) -> bool:
        """Whether the batched forward applies: two or more plain `FlowStep` s
        of one width and parameterisation, none initialising, none with hooks or its
        own memory-saving flag (the batched path does not call the steps)."""
        steps = list(self.flows)
        if len(steps) < 2 or not all(type(step) is FlowStep for step in steps):
            return False
        if any(
            step.initializing()
            or step.memory_saving
            or step._forward_hooks
            or step._forward_pre_hooks
            for step in steps
        ):
            return False
        return len({(step.flows[1].lu, step.flows[0].log_scale.shape) for step in steps}) == 1

    def forward_plain(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(z, logdet)` of the `K` steps, their folded weights built in one batched pass."""
        if not self._batchable():
            return super().forward_plain(x)
        steps = list(self.flows)
        weights, logdet = _NormThenMix.stacked([step._fold() for step in steps], x)
        for step, w in zip(steps, weights.unbind(0), strict=True):
            x, ld = step.forward_given(x, w)
            logdet = logdet + ld
        return x, logdet
