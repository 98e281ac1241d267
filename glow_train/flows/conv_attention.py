r"""Deeper conditioners for the image couplings (`model.conditioner=resnet|attention`),
after Flow++ (Ho et al. 2019, section 3.3).

Both map `(B, C_in, H, W)` to `(B, C_out, H, W)`:

- `resnet`: conv3×3 to `hidden` channels, then `model.conditioner_blocks`
  gated residual blocks, each

  $$
  h \leftarrow \mathrm{LN}\Big(h + \mathrm{GLU}\big(W_2 * \mathrm{drop}(\mathrm{ELU}(
      W_1 * \mathrm{ELU}(h)))\big)\Big),
  $$

  with $W_1$ a 3×3 convolution, $W_2$ a 1×1 convolution to `2 * hidden`
  channels, $\mathrm{GLU}(a, g) = a\,\sigma(g)$ and $\mathrm{LN}$ the layer
  normalisation over channels at each position;
- `attention` ("conv-attn"): each block is followed by a gated multi-head
  self-attention over the `H·W` positions,
  $h \leftarrow \mathrm{LN}\big(h + \mathrm{GLU}(W_o\,\mathrm{MHA}(h))\big)$, with
  queries, keys and values from one 1×1 convolution and
  `torch.nn.functional.scaled_dot_product_attention` (flash or memory-efficient
  kernels where the device has them).

The last layer is a zero-initialised 3×3 convolution with a learned output scale
(`ZeroInit`), as in the plain conditioner: every coupling starts as its
zero-output map (the identity, see `glow_train.flows.coupling` and
`glow_train.flows.logistic_mixture`). Under autocast the layers run in the
autocast dtype; the couplings cast the output to float32 once.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from glow_train.flows.conditioner import Dropout, ZeroInit, conv_conditioner

__all__ = ["CONDITIONERS", "ConvAttentionConditioner", "image_conditioner"]

#: `model.conditioner` of the image couplings
CONDITIONERS = ("conv", "resnet", "attention")


def _channel_norm(norm: nn.LayerNorm, h: Tensor) -> Tensor:
    """Layer normalisation over the channels of `(B, C, H, W)`, at each position."""
    return norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _glu(h: Tensor) -> Tensor:
    a, g = h.chunk(2, dim=1)
    return a * g.sigmoid()


class GatedResidual(nn.Module):
    """ELU → conv3×3 → ELU → dropout → conv1×1 to `2 * hidden` → GLU, added to the
    input, then layer norm over channels."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.drop = Dropout(dropout)
        self.gate = nn.Conv2d(hidden, 2 * hidden, 1)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor) -> Tensor:
        """The block's output, the shape of `h`."""
        r = self.gate(self.drop(F.elu(self.conv(F.elu(h)))))
        return _channel_norm(self.norm, h + _glu(r))


class GatedAttention(nn.Module):
    """Multi-head self-attention over positions, its output gated (GLU) and added to
    the input, then layer norm over channels."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(
                f"attention_heads={heads} must divide hidden_channels={hidden}; "
                "choose a divisor of the conditioner width"
            )
        self.heads = heads
        self.qkv = nn.Conv2d(hidden, 3 * hidden, 1)
        self.drop = Dropout(dropout)
        self.out = nn.Conv2d(hidden, 2 * hidden, 1)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor) -> Tensor:
        """The block's output, the shape of `h`."""
        b, c, height, width = h.shape
        qkv = self.qkv(h).flatten(2).transpose(1, 2)  # (B, HW, 3C)
        q, k, v = (t.unflatten(2, (self.heads, -1)).transpose(1, 2) for t in qkv.chunk(3, 2))
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C / heads)
        a = a.transpose(1, 2).reshape(b, height * width, c).transpose(1, 2)
        a = a.reshape(b, c, height, width)
        return _channel_norm(self.norm, h + _glu(self.out(self.drop(a))))


class ConvAttentionConditioner(nn.Module):
    """conv3×3 in → `blocks` × (`GatedResidual` [→ `GatedAttention`]) → ELU →
    zero-initialised conv3×3 out.

    Args:
        in_channels: channels of the coupling's unchanged half.
        hidden: width of the blocks.
        out_channels: the coupling's parameters per position.
        blocks: residual blocks (`model.conditioner_blocks`, at least 1).
        heads: attention heads, or 0 for none (`resnet`).
        dropout: inside each block, training mode only (`model.dropout`).
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        out_channels: int,
        blocks: int,
        heads: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"conditioner_blocks must be at least 1, got {blocks}")
        self.conv_in = nn.Conv2d(in_channels, hidden, 3, padding=1)
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers.append(GatedResidual(hidden, dropout))
            if heads:
                layers.append(GatedAttention(hidden, heads, dropout))
        self.blocks = nn.Sequential(*layers)
        self.out = ZeroInit(nn.Conv2d(hidden, out_channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        """The coupling's parameters, `(B, out_channels, H, W)` (zeros at initialisation)."""
        return self.out(F.elu(self.blocks(self.conv_in(x))))


def image_conditioner(
    in_channels: int,
    hidden: int,
    out_channels: int,
    dropout: float = 0.0,
    kind: str = "conv",
    blocks: int = 1,
    heads: int = 4,
) -> nn.Module:
    """The conditioner `model.conditioner` names: `conv` (`conv_conditioner`, the
    Glow paper's), `resnet` or `attention` (`ConvAttentionConditioner`).

    Raises:
        ValueError: an unknown kind, fewer than 1 block, heads that do not divide
            `hidden` (each naming the option).
    """
    if kind not in CONDITIONERS:
        raise ValueError(f"unknown conditioner {kind!r}; choose one of {', '.join(CONDITIONERS)}")
    if kind == "conv":
        return conv_conditioner(in_channels, hidden, out_channels, dropout)
    if kind == "attention" and heads < 1:
        raise ValueError(f"attention_heads must be at least 1, got {heads}")
    return ConvAttentionConditioner(
        in_channels, hidden, out_channels, blocks, heads if kind == "attention" else 0, dropout
    )
