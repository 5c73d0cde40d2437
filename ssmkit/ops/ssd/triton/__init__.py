"""Fused Triton kernels for SSD (Mamba-2): the chunked forward and backward, and the decode step.

`ssd_triton` is what `ssd(..., impl="triton")` calls; `ssd_step_triton` updates decode states in place.
`unsupported_reason` and `step_unsupported_reason` name inputs the kernels cannot take, so the dispatchers can
fall back to the chunked path and to the torch step.
"""

from __future__ import annotations

import torch

from .autograd import ssd_triton
from .plan import block_n
from .step import ssd_step_triton

__all__ = ["ssd_triton", "ssd_step_triton", "unsupported_reason", "step_unsupported_reason"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_DSTATE = 256


def unsupported_reason(x, B) -> str | None:
    """Why the kernels cannot take these inputs (a sentence), or None when they can."""
    if x.dtype not in SUPPORTED_DTYPES:
        return f"ssd triton kernels take float32/float16/bfloat16, got {x.dtype}; using the chunked path"
    if block_n(B.shape[-1]) > MAX_DSTATE:
        return f"ssd triton kernels take dstate <= {MAX_DSTATE}, got {B.shape[-1]}; using the chunked path"
    return None


def step_unsupported_reason(state, x) -> str | None:
    """Why the decode kernel cannot take this state and input (a sentence), or None when it can."""
    for name, t in (("x", x), ("state", state)):
        if t.dtype not in SUPPORTED_DTYPES:
            return (f"ssd_step triton kernel takes float32/float16/bfloat16 {name}, got {t.dtype}; "
                    "using the torch step")
    return None
