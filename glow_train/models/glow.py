r"""Glow: a multi-scale flow of ActNorm → invertible 1×1 conv → coupling steps.

Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
NeurIPS 2018 (https://arxiv.org/abs/1807.03039).

Architecture (data → latent), for `L` levels of `K` steps on `(B, C, H, W)`:

    for level in 1..L:
        squeeze                        (B, C, H, W) -> (B, 4C, H/2, W/2)
        K × [ActNorm, InvConv1x1, Coupling]
        if level < L: factor out half  (B, 4C, ..) -> keep (B, 2C, ..) + z_level (B, 2C, ..)
                      with z_level ~ SplitPrior(keep)
    z_top ~ LearnedPrior

Density (change of variables): with `f` the whole flow and `z = (z_1, …, z_L)`,
$\log p(x) = \sum_l \log p(z_l \mid \cdot) + \log|\det \partial f/\partial x|$,
in nats, for continuous `x` (see `glow_train.likelihood.objective` for the
dequantisation and the bits/dim formula).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from glow_train.config import GlowConfig
from glow_train.data.spec import DataSpec
from glow_train.flows import FlowStep, FlowSteps, LearnedPrior, SplitPrior
from glow_train.flows.base import split_channels
from glow_train.flows.squeeze import squeeze2d, unsqueeze2d
from glow_train.models.base import FlowModel, check_coupling, check_positive

__all__ = ["Glow", "SETTING_OPTIONS"]

#: the options of `model=glow` that only some settings use: option -> (the option that
#: decides, the values of it that use the first)
SETTING_OPTIONS = {
    "mixture_components": ("coupling", ("logistic_mixture",)),
    "conditioner_blocks": ("conditioner", ("resnet", "attention")),
    "attention_heads": ("conditioner", ("attention",)),
}


class Glow(FlowModel):
    """Multi-scale Glow for images (`model=glow`).

    Every hyperparameter is required: the defaults live in `configs/model/glow.yaml`
    (`model.K`, `model.L`, `model.hidden_channels`, `model.coupling`,
    `model.lu`) and the paper's settings in `configs/experiment/`.

    Args:
        in_channels: `C` of the images (from the dataset).
        image_size: `H` (square) or `(H, W)`; both divisible by `2**L`.
        K: steps of flow per level.
        L: number of levels (scales).
        hidden_channels: width of the coupling conditioners.
        coupling: `"affine"`, `"additive"` or `"logistic_mixture"` (Flow++'s,
            `glow_train.flows.logistic_mixture`).
        lu: LU-parameterised 1×1 convolutions (else a plain matrix with `slogdet`).
        num_classes: if > 0, the top prior is class-conditional (pass `y`).
        dropout: dropout after the conditioners' hidden layers, in training mode only
            (`model.dropout`; against overfitting small datasets).
        conditioner: the couplings' conditioner, `"conv"` (the paper's three layers),
            `"resnet"` or `"attention"` (`glow_train.flows.conv_attention`).
        conditioner_blocks: residual blocks of a `resnet` or `attention` conditioner.
        attention_heads: heads of an `attention` conditioner's self-attention.
        mixture_components: `K` of a `logistic_mixture` coupling.

    Input is continuous, `(B, C, H, W)`, normally in `[-0.5, 0.5)`
    (`glow_train.preprocess`).
    """

    name = "glow"
    schema = GlowConfig

    @staticmethod
    def unused_option(options: dict[str, Any], key: str) -> str | None:
        """Why `model.<key>` does nothing with the other `options` (a `model.*`
        config), as the end of a one-line error; `None` when it is used."""
        if key not in SETTING_OPTIONS:
            return None
        decider, users = SETTING_OPTIONS[key]
        if options.get(decider) in users:
            return None
        return (
            f"only model.{decider}={' or '.join(users)} uses it, and this run's "
            f"model.{decider} is {options.get(decider)}; add model.{decider}={users[0]} "
            f"or leave model.{key}= out"
        )

    def __init__(
        self,
        in_channels: int,
        image_size: int | Sequence[int],
        K: int,
        L: int,
        hidden_channels: int,
        coupling: str,
        lu: bool,
        num_classes: int = 0,
        dropout: float = 0.0,
        conditioner: str = "conv",
        conditioner_blocks: int = 2,
        attention_heads: int = 4,
        mixture_components: int = 32,
    ):
        super().__init__()
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        check_positive(in_channels=in_channels, K=K, L=L, hidden_channels=hidden_channels)
        check_coupling(coupling)
        check_positive(
            conditioner_blocks=conditioner_blocks,
            attention_heads=attention_heads,
            mixture_components=mixture_components,
        )
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
            dropout=float(dropout),
            conditioner=conditioner,
            conditioner_blocks=conditioner_blocks,
            attention_heads=attention_heads,
            mixture_components=mixture_components,
        )
        net = dict(kind=conditioner, blocks=conditioner_blocks, heads=attention_heads)
        self.image_shape = (in_channels, height, width)
        self.num_dims = in_channels * height * width
        self.num_classes = num_classes

        levels, split_priors = [], []
        c, h, w = in_channels, height, width
        self.latent_shapes: list[tuple[int, int, int]] = []
        for level in range(L):
            c, h, w = 4 * c, h // 2, w // 2
            levels.append(
                FlowSteps(
                    FlowStep(
                        c,
                        hidden_channels,
                        coupling,
                        lu,
                        dropout=dropout,
                        conditioner=net,
                        components=mixture_components,
                    )
                    for _ in range(K)
                )
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
        # The levels run on channels_last maps (see glow_train.flows.squeeze): keep the
        # convolution weights in the same layout. `.to(device)` preserves it.
        self.to(memory_format=torch.channels_last)

    @classmethod
    def for_data(cls, spec: DataSpec, options: dict[str, Any]) -> Glow:
        """`in_channels` and `image_size` from an image spec; `options` are `model.*`.

        Raises:
            ValueError: not image data, or an image size that `2**L` does not divide
                (named by its config keys).
        """
        if spec.kind != "image":
            raise ValueError(f"model=glow needs image data, got {spec.kind} data")
        channels, height, width = spec.shape
        L = int(options["L"])
        if height % 2**L or width % 2**L:
            raise ValueError(
                f"dataset.image_size={height} is not divisible by 2^L = {2**L} (model.L={L}); "
                f"use an image size that is a multiple of {2**L} or a smaller model.L"
            )
        return cls(in_channels=channels, image_size=(height, width), **options)

    def _flow(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Run the flow; return latents, log|det J| and the split priors' log-density
        (everything but the top prior, the one part that depends on the class)."""
        latents: list[Tensor] = []
        logdet = x.new_zeros(x.shape[0], dtype=torch.promote_types(x.dtype, torch.float32))
        log_split = torch.zeros_like(logdet)
        h = x
        for i, level in enumerate(self.levels):
            h = squeeze2d(h)  # (B, C, H, W) -> (B, 4C, H/2, W/2)
            h, ld = level(h)
            logdet = logdet + ld
            if i < len(self.split_priors):
                keep = h.shape[1] // 2
                h, z = split_channels(h, keep)  # (B, 4C, ..) -> 2 × (B, 2C, ..)
                log_split = log_split + self.split_priors[i].log_prob(z, h)
                latents.append(z)
        latents.append(h)
        return latents, logdet, log_split

    def _encode(self, x: Tensor, y: Tensor | None) -> tuple[list[Tensor], Tensor, Tensor]:
        """Run the flow; return latents, log|det J| and the priors' log-density."""
        latents, logdet, log_split = self._flow(x)
        return latents, logdet, log_split + self.top_prior.log_prob(latents[-1], y)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """`x` → `([z_1, …, z_L], log|det J|)`; shapes in `latent_shapes`."""
        latents, logdet, _ = self._encode(x, y)
        return latents, logdet

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Per-image log-density in nats of continuous `x`, shape `(B,)`."""
        _, logdet, log_prior = self._encode(x, y)
        return log_prior + logdet

    def class_log_probs(self, x: Tensor) -> Tensor:
        r"""$\log p(x \mid y=k)$ for every class `k`, `(B, num_classes)`: one
        pass of the flow and one evaluation of the top prior per class (only the top
        prior depends on the class); column `k` equals `log_prob` with `y = k`."""
        self.require_classes()
        latents, logdet, log_split = self._flow(x)
        top = latents[-1]
        columns = [
            (log_split + self.top_prior.log_prob(top, self.class_column(top, k))) + logdet
            for k in range(self.num_classes)
        ]
        return torch.stack(columns, dim=1)

    def log_prob_and_top(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """`log_prob` and the top latent `z_L` (for the auxiliary classifier)."""
        latents, logdet, log_prior = self._encode(x, y)
        return log_prior + logdet, latents[-1]

    def _decode(
        self,
        latents: Sequence[Tensor | None],
        batch_size: int,
        y: Tensor | None,
        temperature: float,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Invert the flow from the top; a `None` latent is drawn from its prior."""

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
        """Inverse of `encode`: latents `[z_1, …, z_L]` → images `(B, C, H, W)`."""
        if len(latents) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} latents, got {len(latents)}")
        return self._decode(list(latents), latents[0].shape[0], y, 1.0, None)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """Draw `n` images `(n, C, H, W)` in model space (`[-0.5, 0.5)` ideally).

        Every latent is drawn from its prior with the standard deviation multiplied
        by `temperature` (0 gives the priors' means; the paper uses 0.7, the
        default of `glow-sample`'s `temperature`). `generator` should live on
        the model's device.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        return self._decode([None] * len(self.levels), n, y, temperature, generator)
