r"""The objective: flow + dequantiser -> per-sample negative log-likelihood.

For quantised data on a grid of $2^n$ bins per dimension and a dequantiser $q(u \mid x)$,
the negative log-likelihood bound in nats of one item is

$$
\mathrm{nll} = -\log p(x + u) + \log q(u \mid x) + D\,n \log 2,
$$

(the last term is the bins' volume; $\log q = 0$ for uniform noise), and the reported
unit is bits per dimension,

$$
\mathrm{bpd} = \frac{\mathrm{nll}}{D \log 2}
             = \frac{-\log p(x + u) + D \log 2^{n}}{D \log 2}.
$$

A class-conditional flow scores $p(x \mid y)$ the same way. With the auxiliary classifier
of the paper's code (`train.class_loss_weight` $w > 0$) the training loss adds $w$ times
the cross-entropy of $p(y \mid z_L)$ in bits per image to the bits/dim; evaluation
reports bits/dim alone.

For continuous data (`Identity`) it is $-\log p(x)$ and the unit is nats per dimension.
$\log p$ is the flow's log-density in nats (`glow_train.Glow.log_prob`), `D` the number
of dimensions of one item (`C·H·W`).

The trainer wraps the `Objective`, not the bare flow: the optimiser, the gradient
clipping, the EMA, DDP / `torch.compile` and the checkpoint all hold it, so a trainable
dequantiser is trained, averaged and saved with the flow. `glow-eval` calls the same
`Objective.forward`, so the trainer's figures and the evaluator's cannot drift apart.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glow_train.data.batch import Batch
from glow_train.data.spec import DataSpec
from glow_train.errors import ConfigError, DataError, NonFiniteError, show
from glow_train.flows.conditioner import ZeroInit
from glow_train.flows.standardize import Standardize
from glow_train.likelihood.dequantize import Dequantizer, build_dequantizer
from glow_train.models.base import FlowModel
from glow_train.validate import check_n_bits

__all__ = [
    "Objective",
    "ClassHead",
    "bits_per_dim",
    "marginal_nll",
    "build_objective",
    "METRICS",
    "CLASS_PRIORS",
    "NO_LABELS",
    "check_class_prior",
]

#: metric name -> how it is printed
METRICS = {"bpd": "bpd", "nats_per_dim": "nats/dim"}


#: what a class-conditional model given unlabelled data says (scoring or sampling it)
NO_LABELS = (
    "this model is class-conditional (p(x|y)) and the data has no labels; "
    "score labelled data (digits, mnist, cifar10, dataset.classes=true)"
)

#: the class priors p(y) of the marginal p(x) of a class-conditional model
CLASS_PRIORS = ("uniform", "train")


def check_class_prior(kind: str) -> None:
    """Refuse a `class_prior=` other than those of `CLASS_PRIORS`."""
    if kind not in CLASS_PRIORS:
        raise ConfigError(f"class_prior must be one of {', '.join(CLASS_PRIORS)}, got {kind!r}")


def bits_per_dim(log_prob: Tensor, num_dims: int, n_bits: int) -> Tensor:
    r"""Bits per dimension of uniformly dequantised discrete data.

    $$
    \mathrm{bpd} = \frac{-\log p(x) + D \log 2^{n}}{D \log 2}
    $$

    Args:
        log_prob: continuous log-density in nats, any shape (e.g. `(B,)` per image).
        num_dims: `D`, the number of dimensions of one image (`C·H·W`).
        n_bits: bit depth of the data the density was evaluated on.

    Returns:
        Tensor of the shape of `log_prob` (computed in at least float32).
    """
    check_n_bits(n_bits)
    log_prob = log_prob.to(torch.promote_types(log_prob.dtype, torch.float32))
    return (-log_prob + num_dims * n_bits * math.log(2.0)) / (num_dims * math.log(2.0))


def marginal_nll(class_nlls: Tensor, log_class_prior: Tensor) -> Tensor:
    r"""The marginal of a class-conditional model, in nats per item, in float64:

    $$
    -\log p(x) = -\log \sum_y p(y)\, p(x \mid y)
               = -\operatorname{logsumexp}_y\big(\log p(y) - \mathrm{nll}(x \mid y)\big)
    $$

    Args:
        class_nlls: `(B, K)` from `Objective.class_nlls` (the dequantisation
            terms are the same in every column, so they carry over unchanged).
        log_class_prior: `(K,)` $\log p(y)$ (`-inf` for a class of
            probability 0).
    """
    joint = log_class_prior.to(class_nlls.device, torch.float64) - class_nlls.double()
    return -torch.logsumexp(joint, dim=1)


class ClassHead(nn.Module):
    r"""Logits of $p(y \mid z_L)$, `(B, num_classes)`, from the channel means of the top
    latent `(B, C, h, w)`: a zero-initialised linear layer (the paper's `ycond`), so it
    starts at the uniform distribution."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.linear = ZeroInit(nn.Linear(channels, num_classes))

    def forward(self, z_top: Tensor) -> Tensor:
        """Logits `(B, num_classes)` of the class of each item, from its top latent."""
        return self.linear(z_top.float().mean(dim=(2, 3)))


class Objective(nn.Module):
    """A flow and its dequantiser, scored in nats per item.

    Args:
        flow: a registered model (`glow_train.models`).
        dequantizer: how data becomes the flow's continuous input.
        standardize: for vector data, the training split's standardisation, a fixed
            layer between the data and the flow whose log-determinant is part of
            the likelihood (`Standardize`).
        class_head: the auxiliary classifier on the top latent of a class-conditional
            flow (`ClassHead`), trained when `class_weight > 0`.

    Calling it, `objective(x, noise, y)`, takes data already on the model's grid
    (`prepare`) and the noise drawn for it (`noise`) and returns the per-item negative
    log-likelihood in nats, `(B,)`, in at least float32. `score` converts that to the
    reported unit (`metric`). `objective(x, noise, y, class_weight)` adds
    `class_weight · D ·` the classifier's cross-entropy in nats, so that `score` of it
    is the paper's loss, bits/dim plus `class_weight` times the class bits per image.
    """

    def __init__(
        self,
        flow: FlowModel,
        dequantizer: Dequantizer,
        standardize: Standardize | None = None,
        class_head: ClassHead | None = None,
    ):
        super().__init__()
        self.flow = flow
        self.dequantizer = dequantizer
        self.standardize = standardize
        self.class_head = class_head
        self.num_dims = flow.num_dims
        self.metric = "bpd" if dequantizer.n_bits is not None else "nats_per_dim"
        self._offset = dequantizer.discretization_nats(self.num_dims)
        self._per_dim = self.num_dims * (math.log(2.0) if self.metric == "bpd" else 1.0)

    @property
    def metric_label(self) -> str:
        """How the metric is printed: `bpd` or `nats/dim`."""
        return METRICS[self.metric]

    def prepare(self, raw: Tensor) -> Tensor:
        """A batch as the dataset yields it -> the model's grid (e.g. uint8 -> float32)."""
        return self.dequantizer.prepare(raw)

    def noise(self, x: Tensor, generator: torch.Generator | None) -> Tensor | None:
        """The dequantisation noise for `x` from `generator` (`None` if none)."""
        return self.dequantizer.noise(x, generator)

    def labels(self, batch: Batch) -> Tensor | None:
        """The labels the flow takes from a batch: `y` for a class-conditional flow.

        Raises:
            DataError: a class-conditional flow given unlabelled items (label -1).
        """
        if self.flow.num_classes == 0:
            return None
        if bool((batch.y < 0).any()):
            raise DataError(NO_LABELS)
        return batch.y

    def forward(
        self, x: Tensor, noise: Tensor | None, y: Tensor | None = None, class_weight: float = 0.0
    ) -> Tensor:
        """Per-item negative log-likelihood in nats, `(B,)`, plus the weighted class loss."""
        x, log_q, logdet = self._flow_input(x, noise)
        if class_weight > 0:
            if self.class_head is None or y is None:
                raise ConfigError("a class loss needs a class head and labels")
            log_prob, z_top = self.flow.log_prob_and_top(x, y)
        else:
            log_prob = self.flow.log_prob(x, y)
        nll = self._nll(log_prob, log_q, logdet)
        if class_weight > 0:
            ce = F.cross_entropy(self.class_head(z_top), y.long(), reduction="none")
            nll = nll + class_weight * self.num_dims * ce
        return nll

    def class_nlls(self, x: Tensor, noise: Tensor | None) -> Tensor:
        r"""The negative log-likelihood in nats given each class, `(B, num_classes)`:
        column `k` is `forward` with `y = k` (one pass of the flow for all of
        them, `glow_train.models.FlowModel.class_log_probs`). `marginal_nll`
        turns it into $-\log p(x)$."""
        x, log_q, logdet = self._flow_input(x, noise)
        return self._nll(self.flow.class_log_probs(x), log_q, logdet)

    def _flow_input(self, x: Tensor, noise: Tensor | None) -> tuple[Tensor, ...]:
        r"""Dequantised, standardised `x` and the two log-densities beside the flow's:
        the dequantiser's $\log q$ and the standardisation's log-determinant (each
        `(B,)`, or `None`)."""
        x, log_q = self.dequantizer(x, noise)
        x, logdet = self._standardized(x)
        return x, log_q, logdet

    def _nll(self, log_prob: Tensor, log_q: Tensor | None, logdet: Tensor | None) -> Tensor:
        r"""The negative log-likelihood in nats from the flow's `log_prob`, `(B,)` or one
        column per class `(B, K)`, in at least float32: $-(\log p + \log|\det|) +$ the
        discretisation offset $+ \log q$."""
        log_prob = log_prob.to(torch.promote_types(log_prob.dtype, torch.float32))
        per_column = (slice(None),) + (None,) * (log_prob.dim() - 1)  # (B,) -> (B, 1)
        if logdet is not None:
            log_prob = log_prob + logdet[per_column]
        nll = -log_prob + self._offset
        return nll if log_q is None else nll + log_q[per_column]

    def _standardized(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Standardised `x` and the log-determinant of the modelled values: with a
        context (`flow.context_dims` leading values) only the rest count, since the
        density is of them given the context."""
        if self.standardize is None:
            return x, None
        z, logdet = self.standardize(x)
        context = getattr(self.flow, "context_dims", 0)
        if context:
            given = torch.log(self.standardize.scale[:context]).sum().to(logdet.dtype)
            logdet = logdet + given
        return z, logdet

    def score(self, nll: Tensor) -> Tensor:
        """Nats per item -> the reported unit (bits/dim or nats/dim), same shape."""
        return nll / self._per_dim

    @torch.no_grad()
    def initialize(self, batch: Batch, generator: torch.Generator | None) -> None:
        """The flow's data-dependent ActNorm initialisation on a dequantised batch."""
        x = self.prepare(batch.x)
        self.flow.initialize(self._flow_input(x, self.noise(x, generator))[0], self.labels(batch))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """`n` samples as data (images: floats in `[0, 1]` on the data's grid).

        A sample that overflows (an extreme latent at a high temperature) is drawn
        clamped, with a `RuntimeWarning`.

        Raises:
            NonFiniteError: no sample is finite (a diverged model), rather than an
                image of clamped NaNs.
        """
        x = self.flow.sample(n, temperature, generator, y)
        finite = torch.isfinite(x).flatten(1).all(1)
        if not bool(finite.all()):
            bad = n - int(finite.sum())
            if bad == n:
                raise self._not_finite(n, temperature, y)
            # A healthy model can overflow on an extreme latent at a high temperature:
            # draw those samples clamped, and say so.
            warnings.warn(
                f"{bad} of {n} samples at temperature {show(temperature)} overflowed (extreme "
                "latents) and are drawn clamped",
                RuntimeWarning,
                stacklevel=1,
            )
            x = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
        if self.standardize is not None:
            x = self.standardize.inverse(x)
        return self.dequantizer.to_data(x)

    def _not_finite(self, n: int, temperature: float, y: Tensor | None) -> NonFiniteError:
        """Why no sample is finite: the temperature, when the priors' means (temperature
        0) decode to finite data, else the model itself."""
        if temperature > 0:
            means = self.flow.sample(1, 0.0, None, None if y is None else y[:1])
            if bool(torch.isfinite(means).all()):
                return NonFiniteError(
                    f"all {n} samples at temperature={show(temperature)} are not finite, while the "
                    "model's own mean (temperature=0) is: the temperature is too high; use "
                    "values around 0.5 to 1"
                )
        return NonFiniteError(
            f"{n} of {n} samples at temperature {show(temperature)} are not finite: "
            "the model diverged; use an earlier checkpoint"
        )

    def config(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild the dequantiser and the standardisation
        (`objective_config`; the statistics themselves are buffers in the weights)."""
        dims = None if self.standardize is None else int(self.standardize.loc.numel())
        head = None
        if self.class_head is not None:
            head = list(self.class_head.linear.layer.weight.shape[::-1])  # [channels, classes]
        return {**self.dequantizer.config(), "standardize": dims, "class_head": head}


def build_objective(
    flow: FlowModel, spec: DataSpec, dequantization: str = "uniform", class_loss_weight: float = 0.0
) -> Objective:
    """The objective for `flow` on data described by `spec`: `dequantization`
    (`uniform` or `variational`) of quantised data; continuous data has none (the
    setting does not apply to it). `class_loss_weight > 0` adds the auxiliary
    classifier of a class-conditional image flow."""
    head = None
    if class_loss_weight > 0:
        if flow.num_classes < 1 or not hasattr(flow, "log_prob_and_top"):
            raise ConfigError(
                "train.class_loss_weight > 0 needs a class-conditional image model: "
                "set model.conditional=true (or train.class_loss_weight=0)"
            )
        head = ClassHead(flow.latent_shapes[-1][0], flow.num_classes)
    if not spec.quantized:  # continuous data: nothing to dequantise, whatever was asked
        standardize = None if spec.loc is None else Standardize(spec.loc, spec.scale)
        return Objective(flow, build_dequantizer("identity", None), standardize)
    if dequantization not in ("uniform", "variational"):
        raise ConfigError(
            f"train.dequantization must be uniform or variational, got {dequantization!r}"
        )
    settings = {"channels": spec.shape[0]} if dequantization == "variational" else {}
    return Objective(flow, build_dequantizer(dequantization, spec.n_bits, **settings), None, head)
