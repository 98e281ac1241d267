"""TensorFloat-32 for float32 matrix products and convolutions on CUDA (`train.tf32`).

On Ampere and newer GPUs, TF32 runs float32 matrix products and convolutions on the
tensor cores with a 10-bit mantissa for the products and float32 accumulation. A
Glow spends most of its FLOPs in the conditioners' 1×1 convolutions, which run as
matrix products (cuBLAS), and in 3×3 convolutions (cuDNN); PyTorch leaves TF32 off
for the former and on for the latter. `train.tf32=true` (the default) turns it on for
both, `false` off for both (true float32). Log-determinants, priors and likelihood
sums are not matrix products of the step and keep their precision either way; the
1×1 convolutions' log-determinants come from their LU factors, not from a product.
Ignored on the CPU and under bf16/fp16 autocast, whose products are not float32.
"""

from __future__ import annotations

import torch

__all__ = ["set_tf32"]


def set_tf32(on: bool) -> None:
    """TF32 on (or off) for CUDA's float32 matrix products and cuDNN's convolutions.

    Through `torch.set_float32_matmul_precision` (`high` or `highest`) and
    `torch.backends.cudnn.allow_tf32`: PyTorch 2.9's per-backend `fp32_precision`
    settings may not be mixed with these in one process, and the compiler reads
    these (its cache key calls `torch.get_float32_matmul_precision`).
    """
    torch.set_float32_matmul_precision("high" if on else "highest")
    torch.backends.cudnn.allow_tf32 = on
