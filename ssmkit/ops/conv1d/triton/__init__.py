"""Fused Triton causal depthwise conv1d (forward, backward, decode step), the `impl="triton"` of ssmkit.ops.conv1d.

`causal_conv1d_triton` and `causal_conv1d_step_triton` take the arguments of the `_ref` functions in the same
order. float64 inputs go to the reference with a one-time warning (the kernels compute in float32).

Version history
- v1: one autograd.Function over kernels.py; x is read in place when its channel stride is 1 (the Mamba
  mixer's x is a strided half of in_proj's output), packed sequences carry a per-row sequence index built on
  the device (no host synchronisation).
"""

from __future__ import annotations

# impl="auto" takes the kernels on CUDA: the gpu-marked tests of this module passed on an H100 (torch 2.11,
# triton 3.6) on 2026-11-25.
AUTO_SELECTABLE = True


import torch

from ssmkit.ops.dispatch import check_triton_device, records_autograd, warn_once

from ssmkit.ops.conv1d.reference import causal_conv1d_ref
from ssmkit.ops.conv1d.step import causal_conv1d_step_ref

from .kernels import conv_bwd, conv_fwd
from .step import conv_step

__all__ = ["causal_conv1d_triton", "causal_conv1d_step_triton"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class CausalConv1dFunction(torch.autograd.Function):
    """(x, weight, bias, initial_state) -> (out, final_state or None); see causal_conv1d_triton."""

    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, seq_idx, cu_seqlens, silu, want_final):
        out, final = conv_fwd(x, weight, bias, initial_state, seq_idx, cu_seqlens, silu, want_final)
        ctx.save_for_backward(x, weight, bias, initial_state, seq_idx, cu_seqlens)
        ctx.silu = silu
        ctx.set_materialize_grads(False)
        return out, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        x, weight, bias, initial_state, seq_idx, cu_seqlens = ctx.saved_tensors
        dout = torch.zeros_like(x) if dout is None else dout.contiguous()
        dfinal = None if dfinal is None else dfinal.contiguous()
        dx, dw, db, dinit = conv_bwd(dout, dfinal, x, weight, bias, initial_state, seq_idx, cu_seqlens, ctx.silu)
        return dx, dw, db, dinit, None, None, None, None


def unsupported_reason(*tensors) -> str | None:
    for t in tensors:
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            return f"conv1d triton kernels take float32/float16/bfloat16, got {t.dtype}; using the reference"
    return None


def causal_conv1d_triton(x, weight, bias=None, activation=None, initial_state=None, return_final_state=False,
                         cu_seqlens=None):
    """Causal depthwise conv1d with the semantics of `causal_conv1d_ref` (same arguments, same order).

    x (batch, seqlen, dim); weight (dim, width); bias (dim,); activation None or "silu"; initial_state
    (batch or nseq, dim, width), oldest input first; cu_seqlens (nseq + 1,) packs sequences into batch 1.
    Returns out (batch, seqlen, dim) in x.dtype, and with return_final_state also the final conv state
    (batch or nseq, dim, width) in x.dtype. Differentiable in x, weight, bias and initial_state.
    """
    reason = unsupported_reason(x, weight, bias, initial_state)
    if reason is not None:
        warn_once(reason)
        return causal_conv1d_ref(x, weight, bias, activation, initial_state, return_final_state, cu_seqlens)
    check_triton_device(x)
    if x.stride(-1) != 1:
        x = x.contiguous()
    seq_idx = None
    if cu_seqlens is not None:
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        nseq = lengths.numel()
        seq_idx = torch.repeat_interleave(torch.arange(nseq, device=x.device, dtype=torch.int32), lengths,
                                          output_size=x.shape[1])
        cu_seqlens = cu_seqlens.contiguous()
    init = None if initial_state is None else initial_state.contiguous()
    weight, bias = weight.contiguous(), None if bias is None else bias.contiguous()
    if records_autograd(x, weight, bias, init):
        out, final = CausalConv1dFunction.apply(x, weight, bias, init, seq_idx, cu_seqlens, activation == "silu",
                                                bool(return_final_state))
    else:  # inference: the forward alone
        out, final = conv_fwd(x, weight, bias, init, seq_idx, cu_seqlens, activation == "silu",
                              bool(return_final_state))
    return (out, final) if return_final_state else out


def causal_conv1d_step_triton(conv_state, x, weight, bias=None, activation=None):
    """One decode step with the semantics of `causal_conv1d_step_ref`: conv_state (batch, dim, width) rolled
    in place (any strides), x (batch, dim) written as its newest column. Returns (batch, dim) in x.dtype."""
    reason = unsupported_reason(conv_state, x, weight, bias)
    if reason is not None:
        warn_once(reason)
        return causal_conv1d_step_ref(conv_state, x, weight, bias, activation)
    check_triton_device(x)
    return conv_step(conv_state, x, weight.contiguous(), None if bias is None else bias.contiguous(),
                     activation == "silu")
