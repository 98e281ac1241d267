"""The initialisation of a long-memory 1-D Glow (`dataset.memory`): GJR-GARCH-t first.

`initialize_memory` fits the first recursion of the model's
`glow_train.flows.recursion.GJRMemory` by maximum likelihood on the initialisation
batch (with the innovations' degrees of freedom when the prior is a Student-t), runs
ActNorm's data-dependent initialisation on the residuals standardised by it, and then
sets the prior's location and scale so that the whole model equals that GJR-GARCH(1,1)
with unit-variance Student-t (or Gaussian) innovations: with zero-initialised
couplings every step is an affine map of the standardised value $\\epsilon$,
$z = a\\epsilon + b$, and a prior of location $b$ and scale $|a|\\,c_\\nu$ undoes it
($c_\\nu = \\sqrt{(\\nu - 2)/\\nu}$, the scale of a unit-variance $t_\\nu$). Exact for a
window of one value of one column; with several values per window the map's diagonal
is matched (its mixing between values is left to training).
"""

from __future__ import annotations

import torch
from torch import Tensor

from glow_train.models.base import FlowModel

__all__ = ["initialize_memory"]


@torch.no_grad()
def initialize_memory(model: FlowModel, x: Tensor) -> None:
    """GJR-GARCH fit, ActNorm initialisation and prior calibration of `model` (a
    `Glow1D` with `memory`) on a batch `x` of its inputs `(B, context_dims + D)`."""
    memory, given = model.memory, model.context_dims
    c = memory.columns
    past = x[:, :given].reshape(len(x), -1, c)
    window = x[:, given:].reshape(len(x), -1, c)
    steps = window.shape[1]
    student_t = model.prior.log_df is not None
    df = memory.fit(past, window, student_t=student_t)
    if student_t:
        model.prior.log_df.copy_(torch.log(df).repeat(steps).to(model.prior.log_df.dtype))
    FlowModel.initialize(model, x)  # ActNorm on the standardised residuals
    h, eps, _ = model.split_context(x[:1])
    d = eps.shape[1]
    probe = torch.cat([eps.new_zeros(1, d), torch.eye(d, dtype=eps.dtype, device=eps.device)])
    z, _ = model.forward_given(probe, h.expand(d + 1, -1))
    shift = z[0]
    slope = (z[1:].diagonal() - shift).abs().clamp_min(1e-12)
    log_scale = torch.log(slope)
    if student_t:
        log_scale = log_scale + 0.5 * torch.log((df - 2) / df).repeat(steps).to(slope.dtype)
    bias = model.prior.params.layer.bias
    bias[:d] = shift.to(bias.dtype)
    bias[d:] = log_scale.to(bias.dtype)
