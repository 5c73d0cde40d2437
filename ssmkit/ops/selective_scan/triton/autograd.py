"""`selective_scan_triton`: the fused Triton selective scan (fwd.py, bwd.py) behind one autograd.Function.

Version history
- v1: the forward writes state checkpoints only when a gradient will be asked for; the Function saves the
  inputs (as given: strided views are read in place) and the checkpoints, nothing of size seqlen x dstate.
  float64 inputs and packed sequences (cu_seqlens) go to the parallel torch scan with a one-time warning.
- v2: when autograd records nothing (inference, prefill) the forward runs directly, as the SSD, conv1d and norm
  ops do: Function.apply's bookkeeping showed as ~230 us of self host time per call in an H100 prefill profile
  (Mamba 130M, 8K tokens; that figure includes the kernels' launches).
"""

from __future__ import annotations

import torch

from ssmkit.ops.dispatch import check_triton_device, records_autograd, warn_once

from .bwd import selective_scan_bwd
from .fwd import selective_scan_fwd

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class SelectiveScanTritonFunction(torch.autograd.Function):
    """(x, dt, A, B, C, D, z, dt_bias, initial_state) -> (y, final_state); see selective_scan_triton."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_state, dt_softplus, checkpoint):
        y, final, ckpt = selective_scan_fwd(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, checkpoint)
        if checkpoint:
            ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state, ckpt)
        ctx.dt_softplus = dt_softplus
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, z, dt_bias, initial_state, ckpt = ctx.saved_tensors
        dy = torch.zeros(x.shape, device=x.device, dtype=x.dtype) if dy is None else dy.contiguous()
        dfinal = None if dfinal is None else dfinal.to(torch.float32).contiguous()
        grads = selective_scan_bwd(dy, dfinal, x, dt, A, B, C, D, z, dt_bias, ctx.dt_softplus, initial_state, ckpt)
        return (*grads, None, None)


def unit_last_stride(t):
    return None if t is None else (t if t.stride(-1) == 1 else t.contiguous())


def selective_scan_triton(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
                          return_final_state=False, cu_seqlens=None):
    """Fused selective scan; the arguments and semantics of `selective_scan_reference`.

    x, dt, z (batch, seqlen, dim); A (dim, dstate); B, C (batch, seqlen, ngroups, dstate); D, dt_bias (dim,);
    initial_state (batch, dim, dstate). Returns y (batch, seqlen, dim) in x.dtype, and with return_final_state
    also the final state (batch, dim, dstate) float32. Differentiable in every tensor input.
    cu_seqlens (packed sequences) and float64 run the parallel torch scan instead, with a one-time warning.
    """
    reason = unsupported_reason(x, cu_seqlens)
    if reason is not None:
        from ssmkit.ops.selective_scan.parallel import selective_scan_parallel

        warn_once(reason)
        kw = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
        return selective_scan_parallel(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                       initial_state=initial_state, return_final_state=return_final_state, **kw)
    check_triton_device(x)
    backward = records_autograd(x, dt, A, B, C, D, z, dt_bias, initial_state)
    x, dt, B, C, z = (unit_last_stride(t) for t in (x, dt, B, C, z))
    A, D, dt_bias, initial_state = (None if t is None else t.contiguous() for t in (A, D, dt_bias, initial_state))
    if backward:
        y, final = SelectiveScanTritonFunction.apply(x, dt, A, B, C, D, z, dt_bias, initial_state,
                                                     bool(dt_softplus), True)
    else:  # inference: the forward alone, without autograd.Function's host-side bookkeeping
        y, final, _ = selective_scan_fwd(x, dt, A, B, C, D, z, dt_bias, bool(dt_softplus), initial_state, False)
    return (y, final) if return_final_state else y


def unsupported_reason(x, cu_seqlens) -> str | None:
    if cu_seqlens is not None:
        return "selective scan triton kernels take no cu_seqlens yet; packed sequences use the parallel scan"
    if x.dtype not in SUPPORTED_DTYPES:
        return f"selective scan triton kernels take float32/float16/bfloat16, got {x.dtype}; using the parallel scan"
    return None
