"""A linear layer for decode steps: F.linear, or for one row on CUDA a Triton GEMV.

A batch-1 decode step multiplies one row by each of its layer's weights; cuBLAS runs these as split-K GEMMs plus
a reduce launch and reads a 4-34 MB weight at 1.1-2.5 TB/s. The GEMV is the norm + linear kernel of
`ssmkit.ops.norm.triton.linear` without its norm: each program loads its whole block of the weight first, then
the row, and is launched with programmatic dependent launch (ssmkit.ops.pdl), so the weight streams in while the
launch before it finishes. On an H100 (benchmarks/results/norm-linear-h100-2026-12-07.md) it took 2.7-13.0 us
against cuBLAS's 6.3-13.5 us at every projection of Transformer++ 1.3B and Mamba 1.4B.

`LINEAR_AUTO = False` keeps F.linear everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import interpreting, records_autograd

LINEAR_AUTO = True
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias): x (..., K), weight (N, K), bias (N,) or None -> (..., N).

    One row (x.numel() == K) on CUDA, without bias or autograd, goes through the Triton GEMV where it takes the
    shape (K up to ssmkit.ops.norm.triton.linear.ONE_PASS_MAX_K, matching 16/32-bit float dtypes, unit inner
    strides); everything else is F.linear, which also raises the usual errors for mismatched shapes or dtypes.
    """
    if (LINEAR_AUTO and x.is_cuda and not interpreting() and bias is None and x.dim() >= 1
            and weight.dim() == 2 and x.numel() == x.shape[-1] == weight.shape[1] and x.dtype == weight.dtype
            and x.dtype in _DTYPES and weight.device == x.device and weight.stride(1) == 1 and x.stride(-1) == 1
            and not records_autograd(x, weight)):
        from ssmkit.ops.norm.triton.linear import ONE_PASS_MAX_K, linear_fwd

        if 0 < x.shape[-1] <= ONE_PASS_MAX_K and weight.shape[0] > 0:
            return linear_fwd(x.reshape(1, -1), weight).reshape(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight, bias)
