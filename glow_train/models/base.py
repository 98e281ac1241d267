"""What every model in the registry shares: ActNorm initialisation, memory saving,
its config, and how it comes back from a checkpoint.

A model is a density `log_prob(x, y) -> (B,)` in nats of continuous input, with
`sample(n, temperature, generator, y)`. It knows nothing about quantisation or
units: the objective (`glow_train.likelihood.objective`) adds the dequantiser and the
reported unit around it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from glow_train.data.spec import DataSpec
from glow_train.flows import ActNorm, FlowSequence, FlowStep
from glow_train.flows.coupling import COUPLINGS
from glow_train.io.checkpoint import CheckpointError, flow_weights, load_checkpoint, model_config

__all__ = [
    "FlowModel",
    "check_positive",
    "check_coupling",
    "IMAGE_COUPLINGS",
    "VECTOR_COUPLINGS",
]


def check_positive(**values: int) -> None:
    """Each value at least 1, else a `ValueError` naming it."""
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


VECTOR_COUPLINGS = (*COUPLINGS, "spline")  # the 1-D Glow's: flows/spline.py as well
IMAGE_COUPLINGS = (*COUPLINGS, "logistic_mixture")  # Glow's: flows/logistic_mixture.py too


def check_coupling(coupling: str, vectors: bool = False) -> None:
    """`coupling` is one the model takes (`vectors`: the 1-D Glow's), else a
    `ValueError` naming the choices."""
    allowed = VECTOR_COUPLINGS if vectors else IMAGE_COUPLINGS
    if coupling in VECTOR_COUPLINGS and coupling not in allowed:
        raise ValueError(
            f"coupling={coupling} is for vectors (model=glow1d, e.g. dataset=csv); "
            f"images take model.coupling={' or '.join(allowed)}"
        )
    if coupling in IMAGE_COUPLINGS and coupling not in allowed:
        raise ValueError(
            f"coupling={coupling} is for images (model=glow); "
            f"vectors take model.coupling={' or '.join(allowed)}"
        )
    if coupling not in allowed:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {', '.join(allowed)}")


class FlowModel(nn.Module):
    """Base class of the registered models.

    Subclasses set `name` (their registry key and `model.name`), build
    themselves from constructor arguments recorded in `config`, and define
    `for_data` (the constructor arguments that come from the data) and
    `log_prob` / `sample`.
    """

    name: ClassVar[str]
    schema: ClassVar[type]  # the dataclass of its ``model.*`` config (glow_train.config)
    config: dict[str, Any]
    num_dims: int
    num_classes: int

    @classmethod
    def for_data(cls, spec: DataSpec, options: dict[str, Any]) -> FlowModel:
        """The model for data described by `spec` with the `model.*` `options`."""
        raise NotImplementedError  # pragma: no cover - abstract

    @staticmethod
    def unused_option(options: dict[str, Any], key: str) -> str | None:
        """Why `model.<key>` does nothing with the other `options`, as the end of a
        one-line error (`glow_train.models.registry.refuse_unused_model_options`);
        `None` when it is used (every option, unless a model says otherwise)."""
        return None

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:  # pragma: no cover
        r"""$\log p(x)$ (or $\log p(x \mid y)$ with labels `y`) in nats per item, `(B,)`.

        Args:
            x: continuous input of the model's shape (images `(B, C, H, W)` in `[-1/2, 1/2)`).
            y: class labels `(B,)` of a class-conditional model, else `None`.

        Returns:
            The log-density of each item, in at least float32.
        """
        raise NotImplementedError

    def class_log_probs(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        r"""$\log p(x \mid y=k)$ in nats for every class `k`, `(B, num_classes)`,
        of a class-conditional model (the marginal $p(x)$ is built on it in
        `glow_train.likelihood.objective.Objective.class_nlls`)."""
        raise NotImplementedError

    def require_classes(self) -> None:
        """A `ValueError` unless the model is class-conditional."""
        if self.num_classes < 1:
            raise ValueError("this model is not class-conditional: it has no p(x|y) per class")

    @staticmethod
    def class_column(like: Tensor, k: int) -> Tensor:
        """The label `k` for every item of `like` (`(B,)` int64 on its device)."""
        return torch.full((like.shape[0],), k, dtype=torch.long, device=like.device)

    def sample(  # pragma: no cover - abstract
        self, n: int, temperature: float, generator: torch.Generator | None, y: Tensor | None
    ) -> Tensor:
        """`n` samples of the model's input space at `temperature`.

        Args:
            n: number of samples.
            temperature: the priors' scale is multiplied by it (1: the model's density).
            generator: the random source (`None`: PyTorch's global one).
            y: class labels `(n,)` of a class-conditional model, else `None`.

        Returns:
            Samples `(n, ...)` on the model's device (map them to data with the dequantiser's
            `to_data`).
        """
        raise NotImplementedError

    @contextmanager
    def _actnorm_init_mode(self):
        norms = [m for m in self.modules() if isinstance(m, ActNorm)]
        for m in norms:
            m.initializing = True
        try:
            yield
        finally:
            for m in norms:
                m.initializing = False

    @torch.no_grad()
    def initialize(self, x: Tensor, y: Tensor | None = None) -> None:
        """Data-dependent ActNorm initialisation on a real batch `x` (model input).

        Each not-yet-initialised ActNorm takes the statistics of its own input in one
        forward pass. Call it once, before wrapping the model in DDP or
        `torch.compile`; already initialised layers (e.g. after loading a
        checkpoint) are left as they are.
        """
        with self._actnorm_init_mode():
            self.log_prob(x, y)

    def set_memory_saving(self, enabled: bool = True) -> None:
        """Recompute activations by inversion in the backward pass of each level.

        Memory for activations then stays constant in `K` (one step's worth plus one
        tensor per level) at the cost of about one more forward pass.
        """
        for module in self.modules():
            if isinstance(module, FlowSequence) and not isinstance(module, FlowStep):
                module.memory_saving = enabled

    @property
    def is_initialized(self) -> bool:
        """True when every ActNorm has been initialised (or loaded initialised)."""
        return all(bool(m.initialized) for m in self.modules() if isinstance(m, ActNorm))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Calling the model returns `log_prob`, so DDP and compile wrap it directly."""
        return self.log_prob(x, y)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FlowModel:
        """Rebuild a model from its `config` (as stored in checkpoints)."""
        return cls(**config)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, ema: bool = True, device: str | torch.device = "cpu"
    ) -> FlowModel:
        """A ready model of this class in eval mode from a glow-train checkpoint.

        Args:
            path: a `.pt` file written by `glow-train`.
            ema: use the EMA weights when the checkpoint has them.
            device: where to put the model.

        Raises:
            CheckpointError: the file is unusable or holds another kind of model
                (`glow_train.likelihood.loading.load_model` rebuilds whatever it holds).
        """
        state = load_checkpoint(path)
        name, _ = model_config(state, path)
        if name != cls.name:
            raise CheckpointError(
                f"{path} holds a {name!r} model, not {cls.name!r}; "
                "use glow_train.likelihood.loading.load_model to rebuild any model"
            )
        return cls.from_state(state, path, ema).to(device).eval()

    @classmethod
    def from_state(cls, state: dict[str, Any], path: Any, ema: bool = True) -> FlowModel:
        """This class from a loaded checkpoint's `model_config` and (EMA) weights;
        every failure is one `CheckpointError` naming `path`. (A ready
        objective, dequantiser included: `glow_train.likelihood.loading.load`.)"""
        _, kwargs = model_config(state, path)
        try:
            model = cls.from_config(kwargs)
            model.load_state_dict(flow_weights(state, ema=ema))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = " ".join(lines[:2])[:200] or type(err).__name__
            raise CheckpointError(f"{path}: cannot rebuild the model ({detail})") from err
        return model
