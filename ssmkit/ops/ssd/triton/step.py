"""SSD decode step in Triton: h <- exp(dt A) h + dt x Bᵀ, y = h C + D x, gated by silu(z), state updated in place.

One launch per layer per token; no host synchronisation and no data-dependent host logic, so it can be captured
in a CUDA graph. The state is float32 or bfloat16 (any float dtype); the update is computed in float32.

Version history
- v1: one program per (row, head, head-dim block); the block shrinks at small batch so that the grid still
  covers every multiprocessor (the step is a pure state read + write: it is bound by memory bandwidth).
- v2: A may be given as A_log (A = -exp(A_log) computed in the kernel) and x, dt, B, C, z by any row stride:
  a Mamba-2 layer's step launched a cast, an exp and a negation per token for A and copies of its in_proj
  slices at batch > 1, each a few microseconds inside a CUDA graph (24-48 layers per token).
- v3: launched with programmatic dependent launch on Hopper (ssmkit.ops.pdl), so the projection after it can
  start streaming its weight while the step runs.
- v4: the parameters (A, dt_bias, D) are read before the PDL wait, and with state_prefetch=True the state (and
  the slot indices) too: the model's layers pass it, since the launch before their step (the input projection or
  the conv step) never writes the state, so its read overlaps that launch's tail. On an H100 a batch-1 decode step
  of the whole model went 291 -> 279 us (Mamba-2 130M) and 1374 -> 1327 us (Mamba-2 1.3B)
  (benchmarks/results/decode-step-prefetch-h100-2026-12-07.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmkit.ops.pdl import pdl_options, wait_for_previous

from .fwd import dt_bounds
from .plan import block_n, next_pow2, sm_count
from .tiles import softplus

# Warps a step program takes (module-level so that a benchmark can sweep it: benchmarks/ssd_gpu.py --step-sweep).
STEP_WARPS = 4


@triton.jit
def _ssd_step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, idx_ptr, y_ptr,
                     s_slot, s_head, s_p, s_n, s_xb, s_dtb, s_bb, s_cb, s_zb, nheads, headdim, ngroups, dstate,
                     dt_lo, dt_hi, SOFTPLUS: tl.constexpr, A_IS_LOG: tl.constexpr, D_PER_P: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr, EARLY_STATE: tl.constexpr):
    """state (nslots, nheads, headdim, dstate) strided; x, z (batch, nheads, headdim), dt (batch, nheads),
    B, C (batch, ngroups, dstate), each with row stride s_*b and the rest contiguous; y (batch, nheads, headdim)
    contiguous; A (nheads,), or A_log when A_IS_LOG; idx (batch,) slot of each row, or None for slot = row.
    PDL (ssmkit.ops.pdl): the parameters (A, dt_bias, D) are read before the wait for the launch before, and with
    EARLY_STATE the state and the slot indices too (the caller's promise that the launch just before does not
    write them); everything else after it."""
    pid = tl.program_id(0)
    pb = tl.program_id(1)
    b = pid // nheads
    h = pid % nheads
    g = h // (nheads // ngroups)
    ps = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    ns = tl.arange(0, BLOCK_N)
    pmask = ps < headdim
    nmask = ns < dstate
    smask = pmask[:, None] & nmask[None, :]
    a = tl.load(A_ptr + h).to(tl.float32)
    if A_IS_LOG:
        a = -tl.exp(a)
    if bias_ptr is not None:
        bias = tl.load(bias_ptr + h).to(tl.float32)
    if D_ptr is not None:
        if D_PER_P:
            Dv = tl.load(D_ptr + h * headdim + ps, mask=pmask, other=0.0).to(tl.float32)
        else:
            Dv = tl.load(D_ptr + h).to(tl.float32)
    if not EARLY_STATE:
        wait_for_previous(PDL)
    sp = state_ptr + _slot(idx_ptr, b) * s_slot + h * s_head + ps[:, None] * s_p + ns[None, :] * s_n
    s = tl.load(sp, mask=smask, other=0.0).to(tl.float32)
    if EARLY_STATE:
        wait_for_previous(PDL)
    dt = tl.load(dt_ptr + b * s_dtb + h).to(tl.float32)
    if bias_ptr is not None:
        dt += bias
    if SOFTPLUS:
        dt = softplus(dt)
    dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    decay = tl.exp(dt * a)
    x = tl.load(x_ptr + b * s_xb + h * headdim + ps, mask=pmask, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * s_bb + g * dstate + ns, mask=nmask, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_cb + g * dstate + ns, mask=nmask, other=0.0).to(tl.float32)
    s = s * decay + (dt * x)[:, None] * Bv[None, :]  # ZOH for A, Euler for B
    tl.store(sp, s.to(state_ptr.dtype.element_ty), mask=smask)
    y = tl.sum(s * Cv[None, :], 1)
    if D_ptr is not None:
        y += x * Dv
    if z_ptr is not None:
        zt = tl.load(z_ptr + b * s_zb + h * headdim + ps, mask=pmask, other=0.0).to(tl.float32)
        y *= zt * tl.sigmoid(zt)
    tl.store(y_ptr + pid * headdim + ps, y.to(y_ptr.dtype.element_ty), mask=pmask)


@triton.jit
def _slot(idx_ptr, b):
    """Row b's state slot: idx[b], or b without indices."""
    if idx_ptr is not None:
        return tl.load(idx_ptr + b).to(tl.int64)
    else:
        return b.to(tl.int64)


def step_block_p(batch: int, nheads: int, headdim: int, dstate: int, device) -> int:
    """Largest head-dim block with a tile of at most 4096 state entries that still gives ~4 programs per SM."""
    bp = next_pow2(headdim)
    while bp > 4 and (bp * block_n(dstate) > 4096
                      or batch * nheads * triton.cdiv(headdim, bp) < 4 * sm_count(device)):
        bp //= 2
    return bp


def ssd_step_triton(state, x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None,
                    state_indices=None, A_is_log=False, state_prefetch=False, block_p=None):
    """Advances `state` by one token IN PLACE and returns y; same arguments as `ssmkit.ops.ssd.ssd_step`.

    state (nslots, nheads, headdim, dstate) float32 or bfloat16, any strides; x, z (batch, nheads, headdim);
    dt (batch, nheads); B, C (batch, ngroups, dstate); D (nheads,) or (nheads, headdim); state_indices (batch,)
    int slot of each row (rows must name distinct slots). Returns y (batch, nheads, headdim) in x.dtype.
    """
    batch, nheads, headdim = x.shape
    ngroups, dstate = B.shape[1], B.shape[2]
    lo, hi = dt_bounds(dt_limit)
    x, dt, B, C, z = (None if t is None else rows_contiguous(t) for t in (x, dt, B, C, z))
    A, D, dt_bias = (None if t is None else t.contiguous() for t in (A, D, dt_bias))
    idx = None if state_indices is None else state_indices.contiguous()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    bp = block_p or step_block_p(batch, nheads, headdim, dstate, x.device)
    if batch * nheads == 0:
        return y
    grid = (batch * nheads, triton.cdiv(headdim, bp))
    _ssd_step_kernel[grid](state, x, dt, A, B, C, D, z, dt_bias, idx, y, *state.stride(), x.stride(0),
                           dt.stride(0), B.stride(0), C.stride(0), 0 if z is None else z.stride(0), nheads,
                           headdim, ngroups, dstate, lo, hi, SOFTPLUS=bool(dt_softplus), A_IS_LOG=bool(A_is_log),
                           D_PER_P=D is not None and D.ndim == 2, BLOCK_P=bp, BLOCK_N=block_n(dstate),
                           EARLY_STATE=bool(state_prefetch), num_warps=STEP_WARPS, **pdl_options(x.device))
    return y


def rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """t itself when everything but its first axis is packed (any row stride: a slice of a wider projection),
    else a contiguous copy."""
    expected = 1
    for size, stride in zip(reversed(t.shape[1:]), reversed(t.stride()[1:])):
        if size != 1 and stride != expected:
            return t.contiguous()
        expected *= size
    return t
