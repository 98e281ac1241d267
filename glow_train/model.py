r"""Glow: a multi-scale flow of ActNorm → invertible 1×1 conv → coupling steps.

Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
NeurIPS 2018 (https://arxiv.org/abs/1807.03039).

Architecture (data → latent), for ``L`` levels of ``K`` steps on ``(B, C, H, W)``::

    for level in 1..L:
        squeeze                        (B, C, H, W) -> (B, 4C, H/2, W/2)
        K × [ActNorm, InvConv1x1, Coupling]
        if level < L: factor out half  (B, 4C, ..) -> keep (B, 2C, ..) + z_level (B, 2C, ..)
                      with z_level ~ SplitPrior(keep)
    z_top ~ LearnedPrior

Density (change of variables): with ``f`` the whole flow and ``z = (z_1, …, z_L)``,
:math:`\log p(x) = \sum_l \log p(z_l \mid \cdot) + \log|\det \partial f/\partial x|`,
in nats, for continuous ``x`` (see :mod:`glow_train.likelihood` for the
dequantisation and the bits/dim formula).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from glow_train.flows import ActNorm, Coupling, FlowSequence, InvertibleLinear
from glow_train.flows.coupling import COUPLINGS
from glow_train.flows.priors import LearnedPrior, SplitPrior
from glow_train.flows.squeeze import squeeze2d, unsqueeze2d

__all__ = ["Glow", "Glow1D", "FlowStep"]


class FlowStep(FlowSequence):
    """One step of flow: ActNorm → invertible 1×1 conv (or linear) → coupling."""

    def __init__(
        self,
        num_channels: int,
        hidden_channels: int,
        coupling: str = "affine",
        lu: bool = True,
        dense: bool = False,
    ):
        super().__init__(
            [
                ActNorm(num_channels),
                InvertibleLinear(num_channels, lu=lu),
                Coupling(num_channels, hidden_channels, coupling, dense=dense),
            ]
        )


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def _check_coupling(coupling: str) -> None:
    if coupling not in COUPLINGS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of {', '.join(COUPLINGS)}")


class _FlowDistribution(nn.Module):
    """Shared parts of :class:`Glow` and :class:`Glow1D`: init, config, ``forward``."""

    config: dict

    @contextmanager
    def _actnorm_init_mode(self):
        norms = [m for m in self.modules() if isinstance(m, ActNorm)]
        for m in norms:
            m._initializing = True
        try:
            yield
        finally:
            for m in norms:
                m._initializing = False

    @torch.no_grad()
    def initialize(self, x: Tensor, y: Tensor | None = None) -> None:
        """Data-dependent ActNorm initialisation on a real batch ``x`` (model input).

        Each not-yet-initialised ActNorm takes the statistics of its own input in one
        forward pass. Call it once, before wrapping the model in DDP or
        ``torch.compile``; already initialised layers (e.g. after loading a
        checkpoint) are left as they are.
        """
        with self._actnorm_init_mode():
            self.log_prob(x, y)

    def set_memory_saving(self, enabled: bool = True) -> None:
        """Recompute activations by inversion in the backward pass of each level.

        Memory for activations then stays constant in ``K`` (one step's worth plus one
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
        """Calling the model returns :meth:`log_prob`, so DDP and compile wrap it directly."""
        return self.log_prob(x, y)

    @classmethod
    def from_config(cls, config: dict):
        """Rebuild a model from its :attr:`config` (as stored in checkpoints)."""
        return cls(**config)

    @classmethod
    def from_checkpoint(cls, path, ema: bool = True, device: str | torch.device = "cpu"):
        """A ready model in eval mode from a glow-train checkpoint.

        Args:
            path: a ``.pt`` file written by ``glow-train``.
            ema: use the EMA weights when the checkpoint has them.
            device: where to put the model.
        """
        from glow_train.checkpoint import load_model

        model, _ = load_model(path, ema=ema, device=device)
        return model


class Glow(_FlowDistribution):
    """Multi-scale Glow for images.

    Args:
        in_channels: ``C`` of the images.
        image_size: ``H`` (square) or ``(H, W)``; both divisible by ``2**L``.
        K: steps of flow per level.
        L: number of levels (scales).
        hidden_channels: width of the coupling conditioners.
        coupling: ``"affine"`` or ``"additive"``.
        lu: LU-parameterised 1×1 convolutions (else a plain matrix with ``slogdet``).
        num_classes: if > 0, the top prior is class-conditional (pass ``y``).

    Input is continuous, ``(B, C, H, W)``, normally in ``[-0.5, 0.5)``
    (:func:`glow_train.likelihood.preprocess`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int | Sequence[int] = 32,
        K: int = 32,
        L: int = 3,
        hidden_channels: int = 512,
        coupling: str = "affine",
        lu: bool = True,
        num_classes: int = 0,
    ):
        super().__init__()
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        _check_positive(in_channels=in_channels, K=K, L=L, hidden_channels=hidden_channels)
        _check_coupling(coupling)
        factor = 2**L
        if height % factor or width % factor:
            raise ValueError(
                f"image size {height}x{width} is not divisible by 2**L = {factor} (L={L}); "
                f"choose a smaller L or an image size that is a multiple of {factor}"
            )
        self.config = dict(
            in_channels=in_channels,
            image_size=[height, width],
            K=K,
            L=L,
            hidden_channels=hidden_channels,
            coupling=coupling,
            lu=lu,
            num_classes=num_classes,
        )
        self.image_shape = (in_channels, height, width)
        self.num_dims = in_channels * height * width

        levels, split_priors = [], []
        c, h, w = in_channels, height, width
        self.latent_shapes: list[tuple[int, int, int]] = []
        for level in range(L):
            c, h, w = 4 * c, h // 2, w // 2
            levels.append(
                FlowSequence(FlowStep(c, hidden_channels, coupling, lu) for _ in range(K))
            )
            if level < L - 1:
                keep = c // 2
                split_priors.append(SplitPrior(keep, c - keep))
                self.latent_shapes.append((c - keep, h, w))
                c = keep
        self.latent_shapes.append((c, h, w))
        self.levels = nn.ModuleList(levels)
        self.split_priors = nn.ModuleList(split_priors)
        self.top_prior = LearnedPrior((c, h, w), num_classes=num_classes)

    def _encode(self, x: Tensor, y: Tensor | None) -> tuple[list[Tensor], Tensor, Tensor]:
        """Run the flow; return latents, log|det J| and the priors' log-density."""
        latents: list[Tensor] = []
        logdet = x.new_zeros(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32))
        log_prior = torch.zeros_like(logdet)
        h = x
        for i, level in enumerate(self.levels):
            h = squeeze2d(h)  # (B, C, H, W) -> (B, 4C, H/2, W/2)
            h, ld = level(h)
            logdet = logdet + ld
            if i < len(self.split_priors):
                keep = h.shape[1] // 2
                h, z = h[:, :keep], h[:, keep:]  # (B, 4C, ..) -> 2 × (B, 2C, ..)
                log_prior = log_prior + self.split_priors[i].log_prob(z, h)
                latents.append(z)
        latents.append(h)
        log_prior = log_prior + self.top_prior.log_prob(h, y)
        return latents, logdet, log_prior

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """``x`` → ``([z_1, …, z_L], log|det J|)``; shapes in :attr:`latent_shapes`."""
        latents, logdet, _ = self._encode(x, y)
        return latents, logdet

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Per-image log-density in nats of continuous ``x``, shape ``(B,)``."""
        _, logdet, log_prior = self._encode(x, y)
        return log_prior + logdet

    def _decode(
        self,
        latents: Sequence[Tensor | None],
        batch_size: int,
        y: Tensor | None,
        temperature: float,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Invert the flow from the top; a ``None`` latent is drawn from its prior."""

        def take(i: int, prior, context: Tensor | None) -> Tensor:
            z = latents[i]
            if z is None:
                z = prior.sample(batch_size, context, temperature, generator)
            return z

        h = take(len(self.levels) - 1, self.top_prior, y)
        for i in reversed(range(len(self.levels))):
            if i < len(self.split_priors):
                z = take(i, self.split_priors[i], h).to(h.dtype)
                h = torch.cat([h, z], dim=1)  # 2 × (B, 2C, ..) -> (B, 4C, ..)
            h = self.levels[i].inverse(h)
            h = unsqueeze2d(h)  # (B, 4C, H/2, W/2) -> (B, C, H, W)
        return h

    def decode(self, latents: Sequence[Tensor], y: Tensor | None = None) -> Tensor:
        """Inverse of :meth:`encode`: latents ``[z_1, …, z_L]`` → images ``(B, C, H, W)``."""
        if len(latents) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} latents, got {len(latents)}")
        return self._decode(list(latents), latents[0].shape[0], y, 1.0, None)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 0.7,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """Draw ``n`` images ``(n, C, H, W)`` in model space (``[-0.5, 0.5)`` ideally).

        Every latent is drawn from its prior with the standard deviation multiplied
        by ``temperature`` (0 gives the priors' means; the reference uses 0.7).
        ``generator`` should live on the model's device.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        return self._decode([None] * len(self.levels), n, y, temperature, generator)


class Glow1D(_FlowDistribution):
    """Glow for vectors ``(B, D)``: K × [ActNorm, LU linear, MLP coupling], no squeeze.

    Args:
        dim: ``D`` (at least 2).
        K: number of steps.
        hidden_features: width of the MLP conditioners.
        coupling: ``"affine"`` or ``"additive"``.
        lu: LU-parameterised linear maps.
        num_classes: if > 0, the prior is class-conditional.
    """

    def __init__(
        self,
        dim: int,
        K: int = 8,
        hidden_features: int = 128,
        coupling: str = "affine",
        lu: bool = True,
        num_classes: int = 0,
    ):
        super().__init__()
        _check_positive(K=K, hidden_features=hidden_features)
        _check_coupling(coupling)
        if dim < 2:
            raise ValueError(f"dim must be at least 2, got {dim}")
        self.config = dict(
            dim=dim,
            K=K,
            hidden_features=hidden_features,
            coupling=coupling,
            lu=lu,
            num_classes=num_classes,
        )
        self.num_dims = dim
        self.flow = FlowSequence(
            FlowStep(dim, hidden_features, coupling, lu, dense=True) for _ in range(K)
        )
        self.prior = LearnedPrior((dim,), num_classes=num_classes)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(B, D)`` → ``(z (B, D), log|det J| (B,))``."""
        return self.flow(x)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        z, logdet = self.flow(x)
        return self.prior.log_prob(z, y) + logdet

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.flow.inverse(z)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        return self.flow.inverse(self.prior.sample(n, y, temperature, generator))
