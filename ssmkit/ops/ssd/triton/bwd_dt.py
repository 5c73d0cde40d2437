"""Gradients of the step size, A and dt_bias for the SSD Triton backward.

With a_t = dt_t A, the gradient of a_k sums every (output j, input i) pair that straddles k (i < k <= j),
pair (j, i) weighing dy_j . C_j h-contribution of x_i. Pairs are summed directly inside a chunk (no cancelling
of large terms; a reverse cumulative sum of dC·C - dB·B would cancel the undecayed diagonal); pairs across
chunks go through chunk totals: sum_{c' >= c} (R_c' - S_c') - R_c, R_c the pairs (j in c, i before c), S_c the
pairs (i in c, j after c); the final state acts as one more output after the last token.
Then d dt_t = x_t·(g_t B_t) + A d a_t, dA = sum_t dt_t d a_t, and the chain rule through softplus and clamp.

Version history
- v1: one program per (sequence, head) walks its sequence backwards, several chunks per step as a
  (chunks, Q) tile, carrying the chunk-total sum; sequences of any length take one pass.
- v2: the scans along each chunk move here from the walks (bwd.py v6): the walks store per-token increments
  (4 parts instead of 5, no scan of Q sums in either walk's chunk loop), and one exclusive scan along the
  (chunks, Q) tile's rows sums them after the head-dim blocks are added (the same sums, reassociated).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tiles import seq_bounds, softplus

# Length arguments are not specialized: Triton would compile a variant of every config for each class of a
# length (== 1, divisible by 16, other), a stall of seconds at a server's first prompt of each class.
@triton.jit(do_not_specialize=("seqlen", "ntok", "npb_c", "npb_x"))
def _bwd_dt_kernel(dt_ptr, bias_ptr, A_ptr, cu_ptr, cparts_ptr, xparts_ptr, cfinal_ptr, ddt_ptr, dA_ptr, dbias_ptr,
                   seqlen, nheads, ntok, npb_c, npb_x, dt_lo, dt_hi,
                   SOFTPLUS: tl.constexpr, Q: tl.constexpr, NCH: tl.constexpr):
    """Per head-dim block and token k, cparts (npb_c, 2, nheads, ntok) from the forward walk: [d_k - R_k (d_k: the
    in-chunk pairs ending at k less those starting at k), R_k]; xparts (npb_x, 2, nheads, ntok) from the reverse
    walk: [S_k, x_k·(g_k B_k)] (the walks may take different head-dim blocks); the in-chunk pairs that
    straddle k are the sum over the chunk's tokens before k of d - R + S. cfinal (nseq, nheads): <dh_T, h_T>.

    Writes ddt (ntok, nheads) for the raw dt, and this sequence's shares of dA and d dt_bias (nseq, nheads).
    """
    h = tl.program_id(0)
    seq = tl.program_id(1)
    start, end = seq_bounds(cu_ptr, seq, seqlen)
    nchunks = tl.cdiv(end - start, Q)
    A = tl.load(A_ptr + h).to(tl.float32)
    carry = 0.0
    if cfinal_ptr is not None:
        carry = tl.load(cfinal_ptr + seq * nheads + h)
    dA = 0.0
    dbias = 0.0
    cs0 = tl.arange(0, NCH)
    qs = tl.arange(0, Q)
    plane = nheads * ntok
    for grp in range(0, tl.cdiv(nchunks, NCH)):
        cs = nchunks - (grp + 1) * NCH + cs0
        rows = start + cs[:, None] * Q + qs[None, :]  # (NCH, Q)
        rmask = (cs[:, None] >= 0) & (rows < end)
        u = tl.load(dt_ptr + rows * nheads + h, mask=rmask, other=0.0).to(tl.float32)
        if bias_ptr is not None:
            u += tl.load(bias_ptr + h).to(tl.float32)
        v = u
        if SOFTPLUS:
            v = softplus(u)
        inside = (v >= dt_lo) & (v <= dt_hi)
        dtv = tl.where(rmask, tl.minimum(tl.maximum(v, dt_lo), dt_hi), 0.0)
        inc = tl.zeros((NCH, Q), dtype=tl.float32)
        across = tl.zeros((NCH, Q), dtype=tl.float32)
        q = tl.zeros((NCH, Q), dtype=tl.float32)
        for pb in range(0, npb_c):
            base = cparts_ptr + (pb * 2 * nheads + h) * ntok + rows
            inc += tl.load(base, mask=rmask, other=0.0)
            across += tl.load(base + plane, mask=rmask, other=0.0)
        for pb in range(0, npb_x):
            base = xparts_ptr + (pb * 2 * nheads + h) * ntok + rows
            s = tl.load(base, mask=rmask, other=0.0)
            inc += s
            across -= s
            q += tl.load(base + plane, mask=rmask, other=0.0)
        within = tl.cumsum(inc, 1) - inc  # tokens of the chunk before k
        chunk_tot = tl.sum(across, 1)
        later = tl.cumsum(chunk_tot, 0, reverse=True) + carry  # sum over chunks c' >= c
        carry += tl.sum(chunk_tot, 0)
        da = within + later[:, None]
        dA += tl.sum(tl.sum(tl.where(rmask, dtv * da, 0.0), 1), 0)
        grad = tl.where(inside & rmask, q + A * da, 0.0)
        if SOFTPLUS:
            grad = tl.where(u > 20.0, grad, grad * tl.sigmoid(u))
        dbias += tl.sum(tl.sum(grad, 1), 0)
        tl.store(ddt_ptr + rows * nheads + h, grad.to(ddt_ptr.dtype.element_ty), mask=rmask)
    tl.store(dA_ptr + seq * nheads + h, dA)
    tl.store(dbias_ptr + seq * nheads + h, dbias)


def launch_bwd_dt(dt, dt_bias, A, cu_seqlens, cparts, xparts, cfinal, plan, dt_softplus, lo, hi, ddt, dA, dbias):
    """Host launcher: one program per (head, sequence); cparts, xparts (npb, 2, nheads, ntok) from the two walks."""
    nheads = A.shape[0]
    if plan.nseq == 0 or nheads == 0:
        return
    _bwd_dt_kernel[(nheads, plan.nseq)](dt, dt_bias, A, cu_seqlens, cparts, xparts, cfinal, ddt, dA, dbias,
                                        plan.seqlen, nheads, cparts.shape[-1], cparts.shape[0], xparts.shape[0],
                                        lo, hi,
                                        SOFTPLUS=dt_softplus, Q=plan.Q, NCH=max(1, 1024 // plan.Q), num_warps=4)
