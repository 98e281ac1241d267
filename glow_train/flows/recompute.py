r"""A backward pass whose memory does not grow with depth.

Plain autograd keeps every intermediate activation of every step of flow until the
backward pass: memory grows linearly with `K·L`. A flow is invertible, so a
step's input can be recomputed from its output instead (Gomez et al. 2017,
"The Reversible Residual Network"; the trick Glow's reference code calls
"memory-efficient gradients"). `run_with_inversion` runs a
`FlowSequence` without recording it, keeps only its
output `z`, and during the backward pass walks the steps in reverse:

1. `x_k = layer_k.inverse(z_k)` and `z_k = layer_k(x_k)` again with a graph
   (`inverse_for_backward`),
2. back-propagate `(dL/dz_k, dL/dlogdet)` to `x_k` and the layer's parameters,
3. continue with `z_{k-1} = x_k`.

Only one layer's activations are alive at a time. A coupling's inverse and its
forward need the same conditioner output `NN(x_a)` (`x_a = z_a` passes through
unchanged), so it is computed once, with a graph, and serves both: the whole
backward costs one forward pass more than plain autograd, not two. The gradients equal those of
plain autograd up to the round-off of the inversion (float32: about 1e-6 relative;
see the tests). Autocast, if it was on in the forward pass, is restored for the
recomputation.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["run_with_inversion"]


class _RecomputeByInversion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sequence, autocast_state, *params: Tensor):
        ctx.sequence = sequence
        ctx.autocast_state = autocast_state
        ctx.num_params = len(params)
        with torch.no_grad():
            z, logdet = sequence.forward_plain(x)
        ctx.save_for_backward(z)
        return z, logdet

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_logdet: Tensor):
        (z,) = ctx.saved_tensors
        device_type, dtype, enabled = ctx.autocast_state
        grad_z = torch.zeros_like(z) if grad_z is None else grad_z
        param_grads: dict[Tensor, Tensor] = {}
        z = z.detach()
        for flow in reversed(ctx.sequence.units()):
            params = [p for p in flow.parameters() if p.requires_grad]
            with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                inputs, z_again, logdet = flow.inverse_for_backward(z)
            g_logdet = torch.zeros_like(logdet) if grad_logdet is None else grad_logdet
            grads = torch.autograd.grad(
                (z_again, logdet), (*inputs, *params), (grad_z, g_logdet), allow_unused=True
            )
            n = len(inputs)
            grad_z = grads[0] if n == 1 else torch.cat(grads[:n], dim=1)
            for p, g in zip(params, grads[n:], strict=True):
                if g is not None:
                    param_grads[p] = param_grads[p] + g if p in param_grads else g
            z = inputs[0].detach() if n == 1 else torch.cat([t.detach() for t in inputs], dim=1)
        all_params = [p for p in ctx.sequence.parameters() if p.requires_grad]
        return (grad_z, None, None, *[param_grads.get(p) for p in all_params])


def run_with_inversion(sequence, x: Tensor) -> tuple[Tensor, Tensor]:
    """`sequence(x)` with the memory-saving backward pass described above."""
    device_type = x.device.type
    autocast_state = (
        device_type,
        torch.get_autocast_dtype(device_type),
        torch.is_autocast_enabled(device_type),
    )
    params = [p for p in sequence.parameters() if p.requires_grad]
    return _RecomputeByInversion.apply(x, sequence, autocast_state, *params)
