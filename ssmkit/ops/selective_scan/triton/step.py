"""The selective scan decode step in Triton: h <- exp(dt' A) h + dt' B x in place, y = C . h + D x, gated by silu(z).

One launch per layer per token; no host synchronisation and no data-dependent host logic, so it can be captured
in a CUDA graph. The update is computed in float32 and stored in the state's dtype; y uses the float32 state,
as `selective_scan_step` does.

Version history
- v1: one program per (batch row, group, block of channels): a (BLOCK_D, dstate) state tile read and written
  once. The step is a pure state read + write, bound by memory bandwidth.
- v2: Mamba-1's A = -exp(A_log) and dt = dt_proj(dt_low) computed in the kernel (A_is_log, dt_proj_weight): a
  Mamba layer's step launched a cast, an exp, a negation and a small GEMM per token for them, each a few
  microseconds inside a CUDA graph (24-48 layers per token).
- v3: launched with programmatic dependent launch on Hopper (ssmkit.ops.pdl).
- v4: dt' by tiles.softplus_fast, the forward's softplus (was ssd's): prefill and decode round dt' alike.
- v5: the parameters (A, dt_proj's weight, dt_bias, D) are read before the PDL wait, and with state_prefetch=True
  the state too (the model's layers pass it: the launch before their step never writes the state), so those
  reads overlap the launch before. On an H100 a batch-1 decode step of Mamba 130M went 310 -> 293 us
  (benchmarks/results/decode-step-prefetch-h100-2026-12-07.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmkit.ops.dispatch import check_triton_device, warn_once
from ssmkit.ops.pdl import pdl_options, wait_for_previous
from ssmkit.ops.selective_scan.step import selective_scan_step

from .autograd import SUPPORTED_DTYPES
from .plan import block_n
from .tiles import channel_tile, softplus_fast

BLOCK_D = 64


@triton.jit
def _scan_step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, w_ptr, y_ptr,
                      dim, dstate, ngroups, dpg, nblk, rank, s_b, s_d, s_n, sx_b, sdt_b, sz_b, sB_b, sB_g, sC_b,
                      sC_g, SOFTPLUS: tl.constexpr, A_IS_LOG: tl.constexpr, BLOCK_D: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PDL: tl.constexpr, EARLY_STATE: tl.constexpr):
    """state (batch, dim, dstate) any strides; x, z (batch, dim) and B, C (batch, ngroups, dstate) with unit
    last stride; dt (batch, dim), or (batch, rank) projected by w (dim, rank) contiguous when w_ptr is given;
    A (dim, dstate), or A_log when A_IS_LOG; y (batch, dim) contiguous. PDL (ssmkit.ops.pdl): the parameters
    (A, w, dt_bias, D) are read before the wait for the launch before, and with EARLY_STATE the state too (the
    caller's promise that the launch just before does not write it); everything else after it."""
    pid = tl.program_id(0)
    b, g, ds, dmask, ns, nmask, smask = channel_tile(pid, nblk, ngroups, dpg, dstate, BLOCK_D, BLOCK_N)
    A = tl.load(A_ptr + ds[:, None] * dstate + ns[None, :], mask=smask, other=0.0).to(tl.float32)
    if A_IS_LOG:
        A = -tl.exp(A)
    if w_ptr is not None:
        rs = tl.arange(0, BLOCK_R)
        rmask = rs < rank
        w = tl.load(w_ptr + ds[:, None] * rank + rs[None, :], mask=dmask[:, None] & rmask[None, :],
                    other=0.0).to(tl.float32)
    if bias_ptr is not None:
        bias = tl.load(bias_ptr + ds, mask=dmask, other=0.0).to(tl.float32)
    if D_ptr is not None:
        Dv = tl.load(D_ptr + ds, mask=dmask, other=0.0).to(tl.float32)
    sp = state_ptr + b * s_b + ds[:, None] * s_d + ns[None, :] * s_n
    if not EARLY_STATE:
        wait_for_previous(PDL)
    h = tl.load(sp, mask=smask, other=0.0).to(tl.float32)
    if EARLY_STATE:
        wait_for_previous(PDL)
    if w_ptr is not None:  # dt = dt_low @ w^T, rounded to dt's dtype like the linear layer's output
        low = tl.load(dt_ptr + b * sdt_b + rs, mask=rmask, other=0.0).to(tl.float32)
        dt = tl.sum(w * low[None, :], 1).to(dt_ptr.dtype.element_ty).to(tl.float32)
    else:
        dt = tl.load(dt_ptr + b * sdt_b + ds, mask=dmask, other=0.0).to(tl.float32)
    if bias_ptr is not None:
        dt += bias
    if SOFTPLUS:
        dt = softplus_fast(dt, False)  # the forward's rows compute dt' with it too
    x = tl.load(x_ptr + b * sx_b + ds, mask=dmask, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * sB_b + g * sB_g + ns, mask=nmask, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * sC_b + g * sC_g + ns, mask=nmask, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bv[None, :]  # ZOH for A, Euler for B
    tl.store(sp, h.to(state_ptr.dtype.element_ty), mask=smask)
    y = tl.sum(h * Cv[None, :], 1)
    if D_ptr is not None:
        y += x * Dv
    if z_ptr is not None:
        zt = tl.load(z_ptr + b * sz_b + ds, mask=dmask, other=0.0).to(tl.float32)
        y *= zt * tl.sigmoid(zt)
    tl.store(y_ptr + b * dim + ds, y.to(y_ptr.dtype.element_ty), mask=dmask)


def selective_scan_step_triton(state, x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False,
                               A_is_log=False, dt_proj_weight=None, state_prefetch=False):
    """Advances `state` by one token IN PLACE and returns y; the arguments of `selective_scan_step`.

    state (batch, dim, dstate), any float dtype and strides; x, dt, z (batch, dim); A (dim, dstate);
    B, C (batch, ngroups, dstate); D, dt_bias (dim,). Returns y (batch, dim) in x.dtype.
    """
    if x.dtype not in SUPPORTED_DTYPES:
        warn_once(f"selective scan triton step takes float32/float16/bfloat16, got {x.dtype}; using the torch step")
        return selective_scan_step(state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                   A_is_log=A_is_log, dt_proj_weight=dt_proj_weight, impl="reference")
    check_triton_device(x)
    batch, dim = x.shape
    ngroups, dstate = B.shape[1], B.shape[2]
    dpg = dim // ngroups
    x, dt, z, B, C = (None if t is None else (t if t.stride(-1) == 1 else t.contiguous()) for t in (x, dt, z, B, C))
    A, D, dt_bias, w = (None if t is None else t.contiguous() for t in (A, D, dt_bias, dt_proj_weight))
    rank = 0 if w is None else w.shape[1]
    y = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    bd = min(BLOCK_D, triton.next_power_of_2(dpg))
    nblk = triton.cdiv(dpg, bd)
    if batch * dim == 0:
        return y
    _scan_step_kernel[(batch * ngroups * nblk,)](
        state, x, dt, A, B, C, D, z, dt_bias, w, y, dim, dstate, ngroups, dpg, nblk, rank, *state.stride(),
        x.stride(0), dt.stride(0), 0 if z is None else z.stride(0), B.stride(0), B.stride(1), C.stride(0),
        C.stride(1), SOFTPLUS=bool(dt_softplus), A_IS_LOG=bool(A_is_log), BLOCK_D=bd, BLOCK_N=block_n(dstate),
        BLOCK_R=max(16, triton.next_power_of_2(rank)), EARLY_STATE=bool(state_prefetch), num_warps=4,
        **pdl_options(x.device))
    return y
