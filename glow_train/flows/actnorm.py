r"""Activation normalisation (Kingma & Dhariwal 2018, section 3.1).

Per channel `c`: $z = (x + b_c)\, e^{s_c}$, applied to `(B, C)` vectors or
`(B, C, *spatial)` maps. $\log|\det J| = N_\text{sp} \sum_c s_c$ where
$N_\text{sp}$ is the number of spatial positions (`H·W`; 1 for vectors).

Data-dependent initialisation: `ActNorm.initialize_from` sets `b = -mean` and
`s = -log std` per channel on a real batch, so the output has zero mean and unit
variance. A channel whose std is below `eps` (a constant channel) keeps `s = 0`
rather than dividing by zero. The `initialized` flag is a buffer, so it is saved
and loaded with the state dict: a loaded model never re-initialises.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from glow_train.flows.base import Flow, logdet_dtype, positions

__all__ = ["ActNorm"]


class ActNorm(Flow):
    """Per-channel affine normalisation with data-dependent initialisation.

    Args:
        num_channels: `C`, the size of dimension 1 of the input.
        eps: std under which a channel counts as constant.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps
        # uint8 rather than bool: every collective backend broadcasts it.
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        #: set by `glow_train.models.FlowModel.initialize` around its one forward
        #: pass: the next forward takes its input's statistics (if not yet initialised)
        self.initializing = False

    @property
    def pending_init(self) -> bool:
        """Whether the next forward initialises this layer from its input."""
        return self.initializing and not bool(self.initialized)

    @staticmethod
    def per_channel(p: Tensor, x: Tensor) -> Tensor:
        """A per-channel vector `(C,)` shaped to broadcast over `x`: `(1, C, 1, 1)`
        for maps `(B, C, H, W)`, `(1, C)` for vectors `(B, C)`."""
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def initialize_from(self, x: Tensor) -> None:
        """Set bias and scale from the statistics of `x` (`(B, C, ...)`)."""
        dims = [d for d in range(x.dim()) if d != 1]
        xf = x.detach().double()
        mean = xf.mean(dim=dims)
        std = xf.std(dim=dims, unbiased=False)
        log_scale = torch.where(std > self.eps, -torch.log(std.clamp_min(self.eps)), 0.0)
        self.bias.copy_(-mean)
        self.log_scale.copy_(log_scale)
        self.initialized.fill_(1)

    def logdet(self, x: Tensor) -> Tensor:
        """`H·W · Σ log s` per sample of `x` (`H·W = 1` for vectors), shape `(B,)`."""
        ld = self.log_scale.to(logdet_dtype(x)).sum() * positions(x)
        return ld.expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(z, logdet)`: `z = (x + b) · s` per channel.

        The first call in initialisation mode sets `b` and `s` from the statistics of `x`.
        """
        if self.pending_init:
            self.initialize_from(x)
        scale = self.per_channel(self.log_scale.exp(), x).to(x.dtype)
        z = (x + self.per_channel(self.bias, x).to(x.dtype)) * scale
        return z, self.logdet(x)

    def inverse(self, z: Tensor) -> Tensor:
        """`x = z / s - b` per channel."""
        inv_scale = self.per_channel(torch.exp(-self.log_scale), z).to(z.dtype)
        return z * inv_scale - self.per_channel(self.bias, z).to(z.dtype)
