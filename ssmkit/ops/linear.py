"""A linear layer for decode steps: F.linear, or for one row on CUDA a Triton GEMV.

A batch-1 decode step multiplies one row by each of its layer's weights; cuBLAS runs these as split-K GEMMs plus
a reduce launch and reads a 4-34 MB weight at 1.1-2.5 TB/s. The GEMV is the norm + linear kernel of
`ssmkit.ops.norm.triton.linear` without its norm: each program loads its whole block of the weight first, then
the row, and is launched with programmatic dependent launch (ssmkit.ops.pdl), so the weight streams in while the
launch before it finishes. On an H100 (benchmarks/results/norm-linear-h100-2026-12-07.md) it took 1.7-11.3 us
against cuBLAS's 6.3-13.5 us at every projection of Transformer++ 1.3B and Mamba 1.4B.

`LINEAR_AUTO = False` keeps F.linear everywhere under impl="auto".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import check_triton_device, interpreting, records_autograd
from .validate import check_impl

LINEAR_AUTO = True
IMPLS = ("auto", "reference", "triton")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           gate: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
    """F.linear(x, weight, bias), or with a gate F.linear(F.silu(gate) * x, weight, bias) (a SwiGLU MLP's down
    projection): x, gate (..., K), weight (N, K), bias (N,) or None -> (..., N).

    impl: "auto" (the Triton GEMV for one row on CUDA where it takes the call, see `gemv_takes`; else the ops,
    which also raise the usual errors for mismatched shapes or dtypes), "reference" (the ops), "triton" (the GEMV;
    a clear error for a call it cannot take). The GEMV forms the gate's product in float32 and rounds it once to
    x's dtype (the ops round silu's output and the product).
    """
    check_impl(impl, IMPLS)
    if impl == "triton":
        check_triton_device(x)
        if not gemv_takes(x, weight, bias, gate):
            raise ValueError("impl: the Triton GEMV takes one row (x.numel() == K <= 8192) of float16/bfloat16/"
                             "float32 matching the weight's (and a gate's) dtype and shape, unit inner strides, no "
                             "bias and no autograd; use impl='auto'")
        return _gemv(x, weight, gate)
    if impl == "auto" and LINEAR_AUTO and x.is_cuda and not interpreting() and gemv_takes(x, weight, bias, gate):
        return _gemv(x, weight, gate)
    if gate is not None:
        x = F.silu(gate) * x
    return F.linear(x, weight, bias)


def gemv_takes(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               gate: torch.Tensor | None = None) -> bool:
    """Whether the GEMV takes the call: one row of K <= ONE_PASS_MAX_K channels, a non-empty (N, K) weight of
    x's dtype (16/32-bit float) on x's device, a gate like x or none, unit inner strides, no bias, nothing for
    autograd to record."""
    from ssmkit.ops.norm.triton.linear import ONE_PASS_MAX_K

    return (bias is None and x.dim() >= 1 and weight.dim() == 2 and 0 < x.shape[-1] <= ONE_PASS_MAX_K
            and x.numel() == x.shape[-1] == weight.shape[1] and weight.shape[0] > 0 and x.dtype == weight.dtype
            and x.dtype in _DTYPES and weight.device == x.device and weight.stride(1) == 1 and x.stride(-1) == 1
            and (gate is None or (gate.shape == x.shape and gate.dtype == x.dtype and gate.device == x.device
                                  and gate.stride(-1) == 1))
            and not records_autograd(x, weight, gate))


def _gemv(x: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    from ssmkit.ops.norm.triton.linear import linear_fwd

    out = linear_fwd(x.reshape(1, -1), weight, gate=None if gate is None else gate.reshape(1, -1))
    return out.reshape(*x.shape[:-1], weight.shape[0])
