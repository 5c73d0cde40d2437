"""Elementwise Triton kernels that apply one of the scan kernels' helpers to a tensor, so that the interpreter
tests can check a helper against float64 on its own (imported only inside the interpreter child process)."""

import triton
import triton.language as tl

from ssmkit.ops.selective_scan.triton.tiles import softplus_fast


@triton.jit
def apply_softplus_fast(v_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out = softplus_fast(v), float32 (n,); PTX off (the interpreter runs no PTX)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(v_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr + offs, softplus_fast(v, False), mask=offs < n)
