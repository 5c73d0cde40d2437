"""The selective scan decode step in Triton: h <- exp(dt' A) h + dt' B x in place, y = C . h + D x, gated by silu(z).

One launch per layer per token; no host synchronisation and no data-dependent host logic, so it can be captured
in a CUDA graph. The update is computed in float32 and stored in the state's dtype; y uses the float32 state,
as `selective_scan_step` does.

Version history
- v1: one program per (batch row, group, block of channels): a (BLOCK_D, dstate) state tile read and written
  once. The step is a pure state read + write, bound by memory bandwidth.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmkit.ops.dispatch import check_triton_device, warn_once

from ssmkit.ops.selective_scan.step import selective_scan_step
from ssmkit.ops.ssd.triton.tiles import softplus

from .autograd import SUPPORTED_DTYPES
from .plan import block_n
from .tiles import channel_tile

BLOCK_D = 64


@triton.jit
def _scan_step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
                      dim, dstate, ngroups, dpg, nblk, s_b, s_d, s_n, sx_b, sdt_b, sz_b, sB_b, sB_g, sC_b, sC_g,
                      SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """state (batch, dim, dstate) any strides; x, dt, z (batch, dim) and B, C (batch, ngroups, dstate) with
    unit last stride; y (batch, dim) contiguous."""
    pid = tl.program_id(0)
    b, g, ds, dmask, ns, nmask, smask = channel_tile(pid, nblk, ngroups, dpg, dstate, BLOCK_D, BLOCK_N)
    dt = tl.load(dt_ptr + b * sdt_b + ds, mask=dmask, other=0.0).to(tl.float32)
    if bias_ptr is not None:
        dt += tl.load(bias_ptr + ds, mask=dmask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = softplus(dt)
    x = tl.load(x_ptr + b * sx_b + ds, mask=dmask, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + ds[:, None] * dstate + ns[None, :], mask=smask, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * sB_b + g * sB_g + ns, mask=nmask, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * sC_b + g * sC_g + ns, mask=nmask, other=0.0).to(tl.float32)
    sp = state_ptr + b * s_b + ds[:, None] * s_d + ns[None, :] * s_n
    h = tl.load(sp, mask=smask, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv[None, :]  # ZOH for A, Euler for B
    tl.store(sp, h.to(state_ptr.dtype.element_ty), mask=smask)
    y = tl.sum(h * Cv[None, :], 1)
    if D_ptr is not None:
        y += x * tl.load(D_ptr + ds, mask=dmask, other=0.0).to(tl.float32)
    if z_ptr is not None:
        zt = tl.load(z_ptr + b * sz_b + ds, mask=dmask, other=0.0).to(tl.float32)
        y *= zt * tl.sigmoid(zt)
    tl.store(y_ptr + b * dim + ds, y.to(y_ptr.dtype.element_ty), mask=dmask)


def selective_scan_step_triton(state, x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False):
    """Advances `state` by one token IN PLACE and returns y; the arguments of `selective_scan_step`.

    state (batch, dim, dstate), any float dtype and strides; x, dt, z (batch, dim); A (dim, dstate);
    B, C (batch, ngroups, dstate); D, dt_bias (dim,). Returns y (batch, dim) in x.dtype.
    """
    if x.dtype not in SUPPORTED_DTYPES:
        warn_once(f"selective scan triton step takes float32/float16/bfloat16, got {x.dtype}; using the torch step")
        return selective_scan_step(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                   impl="reference")
    check_triton_device(x)
    batch, dim = x.shape
    ngroups, dstate = B.shape[1], B.shape[2]
    dpg = dim // ngroups
    x, dt, z, B, C = (None if t is None else (t if t.stride(-1) == 1 else t.contiguous()) for t in (x, dt, z, B, C))
    A, D, dt_bias = (None if t is None else t.contiguous() for t in (A, D, dt_bias))
    y = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    bd = min(BLOCK_D, triton.next_power_of_2(dpg))
    nblk = triton.cdiv(dpg, bd)
    if batch * dim == 0:
        return y
    _scan_step_kernel[(batch * ngroups * nblk,)](
        state, x, dt, A, B, C, D, z, dt_bias, y, dim, dstate, ngroups, dpg, nblk, *state.stride(), x.stride(0),
        dt.stride(0), 0 if z is None else z.stride(0), B.stride(0), B.stride(1), C.stride(0), C.stride(1),
        SOFTPLUS=bool(dt_softplus), BLOCK_D=bd, BLOCK_N=block_n(dstate), num_warps=4)
    return y
