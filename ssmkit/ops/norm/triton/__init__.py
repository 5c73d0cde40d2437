"""Fused Triton RMSNorm and gated RMSNorm (forward and backward), the `impl="triton"` of ssmkit.ops.norm.

`rms_norm_triton` and `gated_rms_norm_triton` take the arguments of the `_ref` functions in the same order.
Inputs the kernels cannot take (float64, groups wider than MAX_GROUP channels) go to the reference with a
one-time warning.

Version history
- v1: one autograd.Function over kernels.py's forward and backward; x and z are flattened to rows and made
  contiguous first (a no-op for the layers' outputs), the weight gradient is reduced on the host.
- v2: add_rms_norm_triton, forward only (the decode step's residual add fused into the next norm).
"""

from __future__ import annotations

# impl="auto" takes the kernels on CUDA: the gpu-marked tests of this module passed on an H100 (torch 2.11,
# triton 3.6) on 2026-11-25.
AUTO_SELECTABLE = True


import torch

from ssmkit.ops.dispatch import check_triton_device, records_autograd, warn_once

from ssmkit.ops.norm.reference import add_rms_norm_ref, gated_rms_norm_ref, rms_norm_ref

from .kernels import MAX_GROUP, add_rms_norm_fwd, gated_rms_norm_bwd, gated_rms_norm_fwd

__all__ = ["rms_norm_triton", "gated_rms_norm_triton", "add_rms_norm_triton", "unsupported_reason"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class GatedRMSNormFunction(torch.autograd.Function):
    """(x, z, weight) rows -> out; see gated_rms_norm_triton."""

    @staticmethod
    def forward(ctx, x, z, weight, eps, group_size, norm_before_gate):
        out, rstd = gated_rms_norm_fwd(x, z, weight, eps, group_size, norm_before_gate)
        ctx.save_for_backward(x, z, weight, rstd)
        ctx.group_size, ctx.norm_before_gate = group_size, norm_before_gate
        return out

    @staticmethod
    def backward(ctx, dout):
        x, z, weight, rstd = ctx.saved_tensors
        dx, dz, dw = gated_rms_norm_bwd(dout.contiguous(), x, z, weight, rstd, ctx.group_size, ctx.norm_before_gate)
        return dx, dz, dw, None, None, None


def unsupported_reason(x, weight, z, group_size) -> str | None:
    """Why the kernels cannot take these inputs (a sentence), or None when they can."""
    for name, t in (("x", x), ("weight", weight), ("z", z)):
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            return f"norm triton kernels take float32/float16/bfloat16, got {name} {t.dtype}; using the reference"
    if group_size > MAX_GROUP:
        return f"norm triton kernels take groups of <= {MAX_GROUP} channels, got {group_size}; using the reference"
    return None


def gated_rms_norm_triton(x, z, weight, eps=1e-6, group_size=None, norm_before_gate=False):
    """Gated RMSNorm, the semantics of `gated_rms_norm_ref` (same arguments, same order).

    x, z (..., dim) (z may be None: a plain grouped RMSNorm); weight (dim,); group_size divides dim (None = dim).
    Returns (..., dim) in promote(x.dtype, weight.dtype). Differentiable in x, z and weight.
    """
    dim = x.shape[-1]
    group_size = dim if group_size is None else group_size
    reason = unsupported_reason(x, weight, z, group_size)
    if reason is not None:
        warn_once(reason)
        return gated_rms_norm_ref(x, z, weight, eps, group_size, norm_before_gate)
    check_triton_device(x)
    rows = x.reshape(-1, dim).contiguous()
    zrows = None if z is None else z.reshape(-1, dim).contiguous()
    weight = weight.contiguous()
    if records_autograd(rows, zrows, weight):
        out = GatedRMSNormFunction.apply(rows, zrows, weight, float(eps), group_size, bool(norm_before_gate))
    else:  # inference: the forward alone (its per-row statistics are not kept)
        out = gated_rms_norm_fwd(rows, zrows, weight, eps, group_size, norm_before_gate)[0]
    return out.reshape(x.shape)


def rms_norm_triton(x, weight, eps=1e-6):
    """RMSNorm, the semantics of `rms_norm_ref`: x (..., dim), weight (dim,) -> (..., dim)."""
    if unsupported_reason(x, weight, None, x.shape[-1]) is not None:
        warn_once(unsupported_reason(x, weight, None, x.shape[-1]))
        return rms_norm_ref(x, weight, eps)
    return gated_rms_norm_triton(x, None, weight, eps)


def add_rms_norm_triton(x, residual, weight, eps, residual_dtype, norm_dtype):
    """The residual add + RMSNorm of `add_rms_norm_ref` (same arguments) in one kernel, forward only: while
    autograd records (any input requiring a gradient), or for dtypes the kernel does not take, the reference
    runs (the dtypes with a one-time warning)."""
    dtypes = (x.dtype, weight.dtype, residual_dtype, norm_dtype) + (() if residual is None else (residual.dtype,))
    if any(d not in SUPPORTED_DTYPES for d in dtypes) or x.shape[-1] > MAX_GROUP:
        warn_once(f"add_rms_norm triton kernel takes float32/float16/bfloat16 rows of <= {MAX_GROUP} channels, got "
                  f"{[str(d) for d in dtypes]} x {x.shape[-1]}; using the reference")
        return add_rms_norm_ref(x, residual, weight, eps, residual_dtype, norm_dtype)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual, weight)):
        return add_rms_norm_ref(x, residual, weight, eps, residual_dtype, norm_dtype)
    check_triton_device(x)
    dim = x.shape[-1]
    rows = x.reshape(-1, dim).contiguous()
    res_rows = None if residual is None else residual.reshape(-1, dim).contiguous()
    out, res_out = add_rms_norm_fwd(rows, res_rows, weight.contiguous(), eps, residual_dtype, norm_dtype)
    return out.reshape(x.shape), res_out.reshape(x.shape)
