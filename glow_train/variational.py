r"""Variational dequantisation (Ho et al. 2019, "Flow++", section 3.1).

Uniform noise puts every discrete image in a box of uniform density; a learned
noise distribution :math:`q(u \mid x)` on the same box can follow the model's
density inside it and tighten the bound

.. math::  -\log P(x) \le \mathbb E_{u \sim q(\cdot \mid x)}
           \big[-\log p(x + u\,2^{-n}) + \log q(u \mid x)\big] + D\,n\log 2 .

Here :math:`q` is a small conditional flow: standard-normal noise
:math:`\varepsilon`, a conditional affine map
:math:`z = \mu(x) + e^{s(x)} \varepsilon` whose :math:`(\mu, s)` come from a
zero-initialised conv net on the image, then a sigmoid into :math:`(0, 1)^D`:

.. math::  \log q(u \mid x) = \sum_d \big[\log\mathcal N(\varepsilon_d) - s_d(x)
           - \log\sigma(z_d) - \log\sigma(-z_d)\big].

It is trained jointly with the flow (the objective holds it), and the trainer and
``glow-eval`` report the same bound, ``log q`` included. With uniform data bins
the bound cannot go below the exact entropy, :math:`n` bits/dim, and approaches it
as :math:`q` approaches uniform (tested).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glow_train.dequantize import Uniform
from glow_train.flows.coupling import ZeroInit

__all__ = ["Variational"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class Variational(Uniform):
    """Learned dequantisation noise for ``n_bits`` images of ``channels`` channels.

    Args:
        n_bits: bit depth of the data.
        channels: ``C`` of the images.
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
        """Standard-normal :math:`\\varepsilon` of ``x``'s shape."""
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    def forward(self, x: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
        dtype = torch.promote_types(x.dtype, torch.float32)
        h = self.net(x).to(dtype)
        mean, log_scale = h[:, 0::2], h[:, 1::2]
        z = mean + torch.exp(log_scale) * noise.to(dtype)
        log_q = -_HALF_LOG_2PI - 0.5 * noise.to(dtype) ** 2 - log_scale
        log_q = log_q - F.logsigmoid(z) - F.logsigmoid(-z)
        u = torch.sigmoid(z)
        return x + (u / 2**self.n_bits).to(x.dtype), log_q.flatten(1).sum(1)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "channels": self.channels, "hidden": self.hidden}
