"""`ssd_triton`: the fused Triton SSD (forward in fwd.py, backward in bwd.py) behind one autograd.Function.

Version history
- v1: the Function only saves inputs and the forward's segment states (the per-chunk states are recomputed
  in the backward, never stored); host code makes every input contiguous and of x's dtype first, so the
  kernels index plain row-major arrays and autograd carries the casts' gradients.
"""

from __future__ import annotations

import torch

from ssmkit.ops.dispatch import records_autograd

from .bwd import ssd_bwd
from .fwd import ssd_fwd


class SSDTritonFunction(torch.autograd.Function):
    """(x, dt, A, B, C, D, z, dt_bias, initial_state) -> (y, final_state); see ssd_triton for shapes."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, chunk_size, dt_softplus, dt_limit):
        y, final, plan, segst, seglog = ssd_fwd(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_state,
                                                cu_seqlens, chunk_size)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, segst, seglog)
        ctx.plan, ctx.dt_softplus, ctx.dt_limit = plan, dt_softplus, dt_limit
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, segst, seglog = ctx.saved_tensors
        dy = torch.zeros_like(x) if dy is None else dy.contiguous()
        dfinal = None if dfinal is None else dfinal.to(torch.float32).contiguous()
        grads = ssd_bwd(dy, dfinal, x, dt, A, B, C, D, z, dt_bias, ctx.dt_softplus, ctx.dt_limit, initial_state,
                        cu_seqlens, ctx.plan, segst, seglog)
        return (*grads, None, None, None, None)


def ssd_triton(x, dt, A, B, C, *, chunk_size=64, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None,
               initial_state=None, cu_seqlens=None):
    """Fused chunked SSD on GPU (or under TRITON_INTERPRET=1); same arguments as `ssmkit.ops.ssd.ssd`.

    x, z (batch, seqlen, nheads, headdim); dt (batch, seqlen, nheads); A, dt_bias (nheads,);
    B, C (batch, seqlen, ngroups, dstate); D (nheads,) or (nheads, headdim);
    initial_state (batch or nseq, nheads, headdim, dstate); cu_seqlens (nseq + 1,) with batch 1.
    Returns (y like x, final_state (batch or nseq, nheads, headdim, dstate) float32). Differentiable.
    """
    def prep(t, dtype=None):
        if t is None:
            return None
        return (t if dtype is None else t.to(dtype)).contiguous()

    args = (prep(x), prep(dt), prep(A), prep(B, x.dtype), prep(C, x.dtype), prep(D), prep(z, x.dtype),
            prep(dt_bias), prep(initial_state), prep(cu_seqlens))
    if not records_autograd(*args):  # inference: the forward alone
        x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens = args
        return ssd_fwd(x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), dt_limit, initial_state, cu_seqlens,
                       chunk_size)[:2]
    y, final = SSDTritonFunction.apply(*args, chunk_size, bool(dt_softplus), dt_limit)
    return y, final
