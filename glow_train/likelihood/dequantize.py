r"""From data to the continuous input of a flow, and back.

Images. Convention (that of the reference implementation, openai/glow): an 8-bit
image `x8` in `0..255` is reduced to `n_bits` of depth,
`q = floor(x8 / 2^(8-n_bits))` in `0..2^n_bits - 1`, and mapped into the
model's input range by

$$
x = q / 2^{n} - 1/2 \in [-1/2,\ 1/2 - 2^{-n}],
$$

and dequantised by adding uniform noise of one bin's width, $u \sim U[0, 2^{-n})^D$,
so the continuous input lies in $[-1/2, 1/2)$. Each discrete image owns a
bin of volume $2^{-nD}$ in that space, hence the discrete log-likelihood is
bounded below by $\log p(x + u) - D\,n \log 2$ (Jensen, over `u`).

A dequantiser (`Dequantizer`) is a module of the objective: `prepare` maps
raw data to the model's grid, `noise` draws the random input it needs (from a
generator the caller seeds, so the trainer and `glow-eval` draw the same
numbers), `forward` turns `(x, noise)` into the flow's continuous input and
the per-sample log-density of that choice ($\log q(u \mid x)$; 0 for
uniform noise on a unit-volume bin), and `to_data` maps model output back.
`Uniform` serves quantised data, `Identity` continuous data, and
`Variational` learns its noise (`train.dequantization`).

Variational dequantisation (Ho et al. 2019, "Flow++", section 3.1).

Uniform noise puts every discrete image in a box of uniform density; a learned
noise distribution $q(u \mid x)$ on the same box can follow the model's
density inside it and tighten the bound

$$
-\log P(x) \le \mathbb E_{u \sim q(\cdot \mid x)}
\big[-\log p(x + u\,2^{-n}) + \log q(u \mid x)\big] + D\,n\log 2 .
$$

Here $q$ is a small conditional flow: standard-normal noise
$\varepsilon$, a conditional affine map
$z = \mu(x) + e^{s(x)} \varepsilon$ whose $(\mu, s)$ come from a
zero-initialised conv net on the image, then a sigmoid into $(0, 1)^D$:

$$
\log q(u \mid x) = \sum_d \big[\log\mathcal N(\varepsilon_d) - s_d(x)
- \log\sigma(z_d) - \log\sigma(-z_d)\big].
$$

It is trained jointly with the flow (the objective holds it), and the trainer and
`glow-eval` report the same bound, `log q` included. With uniform data bins
the bound cannot go below the exact entropy, $n$ bits/dim, and approaches it
as $q$ approaches uniform (tested).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glow_train.errors import ConfigError
from glow_train.flows.conditioner import ZeroInit
from glow_train.validate import check_n_bits

__all__ = [
    "quantize",
    "dequantize",
    "preprocess",
    "postprocess",
    "Dequantizer",
    "Uniform",
    "Identity",
    "Variational",
    "DEQUANTIZERS",
    "build_dequantizer",
]


def _check_pixels(images: Tensor) -> None:
    """8-bit pixel values: an integer tensor in `0..255` (uint8 always is)."""
    if images.dtype == torch.uint8:
        return
    if images.dtype.is_floating_point or images.dtype.is_complex or images.dtype == torch.bool:
        raise ValueError(
            f"expected integer 8-bit images (uint8 in 0..255), got {images.dtype}; "
            "model-space input in [-0.5, 0.5) needs no preprocessing"
        )
    if images.numel() and (int(images.min()) < 0 or int(images.max()) > 255):
        raise ValueError(
            f"pixel values must be in 0..255, got {int(images.min())}..{int(images.max())}"
        )


def quantize(images: Tensor, n_bits: int) -> Tensor:
    """Map uint8 images to the model's discrete grid.

    Args:
        images: `(B, C, H, W)` (or any shape) integer tensor with values in `0..255`.
        n_bits: bit depth kept, 1..8.

    Raises:
        ValueError: float input, or integers outside `0..255`.

    Returns:
        float32 tensor of the same shape with values `q / 2^n_bits - 0.5` where
        `q = floor(images / 2^(8 - n_bits))`.
    """
    check_n_bits(n_bits)
    _check_pixels(images)
    levels = torch.div(images.to(torch.int32), 2 ** (8 - n_bits), rounding_mode="floor")
    return levels.to(torch.float32) / 2**n_bits - 0.5


def _uniform_noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def dequantize(x: Tensor, n_bits: int, generator: torch.Generator | None = None) -> Tensor:
    """Add uniform noise of one bin's width, `U[0, 2^-n_bits)`, to quantised input."""
    check_n_bits(n_bits)
    return x + _uniform_noise(x, generator) / 2**n_bits


def preprocess(
    images: Tensor, n_bits: int, generator: torch.Generator | None = None, noise: bool = True
) -> Tensor:
    """uint8 images -> dequantised model input in `[-0.5, 0.5)` (float32)."""
    x = quantize(images, n_bits)
    return dequantize(x, n_bits, generator) if noise else x


def postprocess(x: Tensor, n_bits: int) -> Tensor:
    """Model-space images -> floats in `[0, 1]` on the `n_bits` grid (for `save_image`).

    `x` is clamped to `[-0.5, 0.5)`, mapped to its bin `q` in `0..2^n-1`, and
    returned as `q / (2^n - 1)`.
    """
    check_n_bits(n_bits)
    levels = 2**n_bits
    q = torch.floor((x.float() + 0.5) * levels).clamp_(0, levels - 1)
    return q / (levels - 1)


class Dequantizer(nn.Module):
    """Base class; see the module docstring for the four methods.

    Attributes:
        name: registry key, stored in checkpoints (`objective_config.dequantizer`).
        n_bits: bit depth of the data, `None` for continuous data.
    """

    name: str = ""
    n_bits: int | None = None

    def prepare(self, raw: Tensor) -> Tensor:
        """A batch as the dataset yields it -> the model's (discrete) grid, float."""
        raise NotImplementedError  # pragma: no cover - abstract

    def noise(self, x: Tensor, generator: torch.Generator | None) -> Tensor | None:
        """The random input of `forward` for `x`, or `None` when it needs none."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """`(continuous input, log q(u | x) per sample or None when it is 0)`."""
        raise NotImplementedError  # pragma: no cover - abstract

    def discretization_nats(self, num_dims: int) -> float:
        r"""The constant of the negative log-likelihood: $D\,n \log 2$ for data on
        a grid of $2^n$ bins per dimension (the bins' volume), 0 for continuous data."""
        return 0.0

    def to_data(self, x: Tensor) -> Tensor:
        """Model output -> data (images: floats in `[0, 1]` on the data's grid)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def config(self) -> dict[str, Any]:
        """What a checkpoint records to rebuild it: its name and options."""
        return {"dequantizer": self.name, "n_bits": self.n_bits}


class Uniform(Dequantizer):
    """Uniform dequantisation of `n_bits` images (the module docstring's convention)."""

    name = "uniform"

    def __init__(self, n_bits: int):
        super().__init__()
        check_n_bits(n_bits)
        self.n_bits = n_bits

    def prepare(self, raw: Tensor) -> Tensor:
        """Raw uint8 images → the model's grid of `n_bits` (`quantize`)."""
        return quantize(raw, self.n_bits)

    def noise(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Uniform noise in `[0, 1)` of `x`'s shape."""
        return _uniform_noise(x, generator)

    def forward(self, x: Tensor, noise: Tensor | None) -> tuple[Tensor, None]:
        r"""`(x + u, None)` with $u$ = noise of one bin's width ($\log q = 0$)."""
        return x + noise / 2**self.n_bits, None

    def discretization_nats(self, num_dims: int) -> float:
        r"""$D\,n \log 2$: the bins' volume."""
        return num_dims * self.n_bits * math.log(2.0)

    def to_data(self, x: Tensor) -> Tensor:
        """Model output → images in `[0, 1]` on the `n_bits` grid (`postprocess`)."""
        return postprocess(x, self.n_bits)


class Identity(Dequantizer):
    """Continuous data: the input is the data itself, no noise, no offset."""

    name = "identity"

    def prepare(self, raw: Tensor) -> Tensor:
        """Continuous data as it is, in at least float32."""
        return raw.to(torch.promote_types(raw.dtype, torch.float32))

    def noise(self, x: Tensor, generator: torch.Generator | None) -> None:
        """`None`: continuous data needs no noise."""
        return None

    def forward(self, x: Tensor, noise: Tensor | None) -> tuple[Tensor, None]:
        """`(x, None)`: the data is the flow's input."""
        return x, None

    def to_data(self, x: Tensor) -> Tensor:
        """Model output as it is."""
        return x


# ------------------------------------------------------------------ variational
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Variational(Uniform):
    r"""Learned dequantisation noise for `n_bits` images of `channels` channels.

    Args:
        n_bits: bit depth of the data.
        channels: `C` of the images.
        hidden: width of the conditioning conv net.
    """

    name = "variational"

    def __init__(self, n_bits: int, channels: int, hidden: int = 32):
        super().__init__(n_bits)
        self.channels, self.hidden = int(channels), int(hidden)
        self.net = nn.Sequential(
            nn.Conv2d(self.channels, self.hidden, 3, padding=1),
            nn.ReLU(),
            ZeroInit(nn.Conv2d(self.hidden, 2 * self.channels, 3, padding=1)),
        )

    def noise(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        r"""Standard-normal $\varepsilon$ of `x`'s shape."""
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def forward(self, x: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
        r"""`(x + u, log q(u | x))`: the noise mapped through the learned flow $q(u \mid x)$."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        h = self.net(x).to(dtype)
        mean, log_scale = h[:, 0::2], h[:, 1::2]
        z = mean + torch.exp(log_scale) * noise.to(dtype)
        log_q = -_HALF_LOG_2PI - 0.5 * noise.to(dtype) ** 2 - log_scale
        log_q = log_q - F.logsigmoid(z) - F.logsigmoid(-z)
        u = torch.sigmoid(z)
        return x + (u / 2**self.n_bits).to(x.dtype), log_q.flatten(1).sum(1)

    def config(self) -> dict[str, Any]:
        """Its name and options, with the width of its conditioning network."""
        return {**super().config(), "channels": self.channels, "hidden": self.hidden}


DEQUANTIZERS = ("uniform", "variational", "identity")


def build_dequantizer(name: str, n_bits: int | None, **settings: Any) -> Dequantizer:
    """The dequantiser `name` for data of `n_bits` (`None`: continuous);
    `settings` are the rest of its `Dequantizer.config` (`variational`:
    `channels` and `hidden`)."""
    if name not in DEQUANTIZERS:
        raise ConfigError(f"unknown dequantizer {name!r}; choose one of {', '.join(DEQUANTIZERS)}")
    if name == "identity":
        return Identity()
    if n_bits is None:
        raise ConfigError(f"dequantizer {name!r} needs quantised data (n_bits)")
    if name == "variational":
        return Variational(n_bits, **settings)
    return Uniform(n_bits)
