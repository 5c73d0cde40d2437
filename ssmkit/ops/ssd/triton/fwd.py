"""Fused chunked SSD forward in Triton: one program walks the chunks of one segment of a sequence for one head
and one block of the head dimension, keeping the (dstate, headdim) state in registers between chunks.

Per chunk (Dao & Gu 2024, section 6): (1) the diagonal block (L o C Bᵀ) x, (4) the entering state to outputs
exp(cum) C h, (2)+(3) the state update h <- exp(sum a) h + (B o w)ᵀ x; then D x and the silu(z) gate.

Version history
- v1: one fused kernel instead of mamba_ssm's five (cumsum, chunk state, state passing, bmm, chunk scan): the
  per-chunk states never touch device memory, so the forward moves x, B, C, dt, z in and y out, nothing else.
  Sequences too long for the grid are cut into segments: a pre-pass writes each segment's own end state
  (zero start) and each segment combines the ones before it (`incoming_state`).
- v2: the segment pre-pass updates its state with hi/lo split products, as the backward does (it feeds the
  backward's recomputed states); the main kernel keeps one bf16 product (y and the final state are within bf16
  tolerance without it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .plan import block_n, configs, make_plan, pick, tuning_shape
from .tiles import (chunk_decay, dot_split, head_tiles, incoming_state, load_skip, load_tile, program_segment,
                    seq_bounds, state_tile_offsets)


# Length arguments are not specialized: Triton would compile a variant of every config for each class of a
# length (== 1, divisible by 16, other), a stall of seconds at a server's first prompt of each class.
@triton.jit(do_not_specialize=("seqlen", "nseg", "seg_chunks"))
def _segment_state_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, cu_ptr, segst_ptr, seglog_ptr,
                          seqlen, nheads, headdim, ngroups, dstate, nseg, seg_chunks, dt_lo, dt_hi,
                          SOFTPLUS: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr,
                          BLOCK_N: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr):
    """Each segment's own end state from a zero start, and its total log-decay (all but the last segment)."""
    h, pb, seq, seg = program_segment(nheads, headdim, nseg, BLOCK_P)
    start, end = seq_bounds(cu_ptr, seq, seqlen)
    nchunks = tl.cdiv(end - start, Q)
    if seg < tl.cdiv(nchunks, seg_chunks) - 1:
        g, ps, ns, pmask, nmask, qs = head_tiles(h, pb, nheads, ngroups, headdim, dstate, BLOCK_P, BLOCK_N, Q)
        A = tl.load(A_ptr + h).to(tl.float32)
        dtype = x_ptr.dtype.element_ty
        S = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
        logdecay = 0.0
        for c in range(seg * seg_chunks, seg * seg_chunks + seg_chunks):
            rows = start + c * Q + qs
            rmask = rows < end
            dtv, a, cum, total = chunk_decay(dt_ptr, bias_ptr, rows, rmask, h, nheads, dt_lo, dt_hi, A, SOFTPLUS)
            x = load_tile(x_ptr, rows, rmask, nheads * headdim, h * headdim, ps, pmask)
            Bt = load_tile(B_ptr, rows, rmask, ngroups * dstate, g * dstate, ns, nmask)
            w = tl.exp(total - cum) * dtv
            S = tl.exp(total) * S + dot_split(tl.trans(Bt), x.to(tl.float32) * w[:, None], dtype, SPLIT, PREC)
            logdecay += total
        idx = (seq.to(tl.int64) * nseg + seg) * nheads + h
        offs = state_tile_offsets(ps, ns, headdim, dstate)
        tl.store(segst_ptr + idx * headdim * dstate + offs, S, mask=nmask[:, None] & pmask[None, :])
        if pb == 0:
            tl.store(seglog_ptr + idx, logdecay)


@triton.jit(do_not_specialize=("seqlen", "nseg", "seg_chunks"))
def _ssd_fwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, cu_ptr,
                    segst_ptr, seglog_ptr, y_ptr, final_ptr,
                    seqlen, nheads, headdim, ngroups, dstate, nseg, seg_chunks, dt_lo, dt_hi,
                    SOFTPLUS: tl.constexpr, D_PER_P: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr,
                    BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    """y for one (segment, head-dim block, head); the last segment of each sequence also writes its final state."""
    h, pb, seq, seg = program_segment(nheads, headdim, nseg, BLOCK_P)
    start, end = seq_bounds(cu_ptr, seq, seqlen)
    nchunks = tl.cdiv(end - start, Q)
    last_seg = tl.maximum(tl.cdiv(nchunks, seg_chunks), 1) - 1
    if seg <= last_seg:
        g, ps, ns, pmask, nmask, qs = head_tiles(h, pb, nheads, ngroups, headdim, dstate, BLOCK_P, BLOCK_N, Q)
        causal = qs[:, None] >= qs[None, :]
        A = tl.load(A_ptr + h).to(tl.float32)
        dtype = x_ptr.dtype.element_ty
        S = incoming_state(init_ptr, segst_ptr, seglog_ptr, seq, seg, nseg, h, nheads, ps, ns, pmask, nmask,
                           headdim, dstate, BLOCK_N, BLOCK_P)
        if D_ptr is not None:
            Dv = load_skip(D_ptr, h, headdim, ps, pmask, D_PER_P)
        logdecay = 0.0
        c1 = tl.minimum(seg * seg_chunks + seg_chunks, nchunks)
        for c in range(seg * seg_chunks, c1):
            rows = start + c * Q + qs
            rmask = rows < end
            dtv, a, cum, total = chunk_decay(dt_ptr, bias_ptr, rows, rmask, h, nheads, dt_lo, dt_hi, A, SOFTPLUS)
            logdecay += total
            x = load_tile(x_ptr, rows, rmask, nheads * headdim, h * headdim, ps, pmask)
            Bt = load_tile(B_ptr, rows, rmask, ngroups * dstate, g * dstate, ns, nmask)
            Ct = load_tile(C_ptr, rows, rmask, ngroups * dstate, g * dstate, ns, nmask)
            # (1) diagonal block: scores[j, i] = C_j.B_i exp(cum_j - cum_i) dt_i for i <= j
            CB = tl.dot(Ct, tl.trans(Bt), input_precision=PREC)
            L = tl.exp(tl.where(causal, cum[:, None] - cum[None, :], float("-inf")))
            y = tl.dot((CB * L * dtv[None, :]).to(dtype), x, input_precision=PREC)
            # (4) the entering state's share, decayed from the chunk start
            y += tl.exp(cum)[:, None] * tl.dot(Ct, S.to(dtype), input_precision=PREC)
            # (2)+(3) the state leaving the chunk
            w = tl.exp(total - cum) * dtv
            S = tl.exp(total) * S + tl.dot(tl.trans((Bt * w[:, None]).to(dtype)), x, input_precision=PREC)
            if D_ptr is not None:
                y += x.to(tl.float32) * Dv
            if z_ptr is not None:
                zt = load_tile(z_ptr, rows, rmask, nheads * headdim, h * headdim, ps, pmask).to(tl.float32)
                y *= zt * tl.sigmoid(zt)
            offs = rows[:, None] * (nheads * headdim) + h * headdim + ps[None, :]
            tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=rmask[:, None] & pmask[None, :])
        if seg == last_seg:
            offs = state_tile_offsets(ps, ns, headdim, dstate)
            base = (seq.to(tl.int64) * nheads + h) * headdim * dstate
            tl.store(final_ptr + base + offs, S, mask=nmask[:, None] & pmask[None, :])
            if seglog_ptr is not None:
                if pb == 0:  # the backward also needs the last segment's decay (for the final state's gradient)
                    tl.store(seglog_ptr + (seq.to(tl.int64) * nseg + seg) * nheads + h, logdecay)


def dt_bounds(dt_limit) -> tuple[float, float]:
    if dt_limit is None:
        return float("-inf"), float("inf")
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    if lo > 0.0 or hi < float("inf"):
        return lo, hi
    return float("-inf"), float("inf")


def dot_precision(dtype: torch.dtype) -> str:
    """Full float32 products for float32 inputs (tf32 would miss the float32 tolerance by 30x)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def ssd_fwd(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None, initial_state=None,
            cu_seqlens=None, chunk_size=64, *, config=None, seg_chunks=None):
    """Fused forward. Inputs contiguous: x, z (batch, seqlen, nheads, headdim); dt (batch, seqlen, nheads);
    B, C (batch, seqlen, ngroups, dstate); A, dt_bias (nheads,); D (nheads,) or (nheads, headdim);
    initial_state (nseq, nheads, headdim, dstate). `config` forces one block config (tests check each one);
    `seg_chunks` forces the segment length in chunks.
    Returns (y like x, final_state (nseq, nheads, headdim, dstate) float32, plan, segst, seglog)."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    plan = make_plan(x, nheads, cu_seqlens, chunk_size, seg_chunks)
    lo, hi = dt_bounds(dt_limit)
    bn = block_n(dstate)
    y = torch.empty_like(x)
    final = torch.empty(plan.nseq, nheads, headdim, dstate, device=x.device, dtype=torch.float32)
    segst = seglog = None
    if plan.nseg > 1:
        segst = torch.empty(plan.nseq, plan.nseg, nheads, headdim, dstate, device=x.device, dtype=torch.float32)
        seglog = torch.empty(plan.nseq, plan.nseg, nheads, device=x.device, dtype=torch.float32)
    prec = dot_precision(x.dtype)
    scalars = (seqlen, nheads, headdim, ngroups, dstate, plan.nseg, plan.seg_chunks, lo, hi)

    def run(cfg):
        bp = cfg["BLOCK_P"]
        grid = (plan.nseq * plan.nseg * triton.cdiv(headdim, bp) * nheads,)
        meta = dict(Q=plan.Q, BLOCK_P=bp, BLOCK_N=bn, PREC=prec, num_warps=cfg["num_warps"],
                    num_stages=cfg["num_stages"])
        if segst is not None:
            _segment_state_kernel[grid](x, dt, A, B, dt_bias, cu_seqlens, segst, seglog, *scalars,
                                        SOFTPLUS=dt_softplus, SPLIT=x.dtype != torch.float32, **meta)
        _ssd_fwd_kernel[grid](x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, segst, seglog, y, final,
                              *scalars, SOFTPLUS=dt_softplus, D_PER_P=D is not None and D.ndim == 2, **meta)

    if config is None:
        key = (x.dtype, tuning_shape(plan), headdim, dstate, ngroups, nheads, D is not None, z is not None)
        config = pick("fwd", key, configs(headdim, dstate, "fwd"), run, x.device, work=x.numel())
    run(config)
    return y, final, plan, segst, seglog
