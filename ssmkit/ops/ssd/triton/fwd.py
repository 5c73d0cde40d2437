"""Fused chunked SSD forward in Triton: one program walks the chunks of one segment of a sequence for one head
and one block of the head dimension, keeping the (dstate, headdim) state in registers between chunks.

Per chunk (Dao & Gu 2024, section 6): (1) the diagonal block (L o C Bᵀ) x, (4) the entering state to outputs
exp(cum) C h, (2)+(3) the state update h <- exp(sum a) h + (B o w)ᵀ x; then D x and the silu(z) gate. The state is
held as blocks of SUB_N rows of dstate, and C Bᵀ and C h are summed over those blocks.

Version history
- v1: one fused kernel instead of mamba_ssm's five (cumsum, chunk state, state passing, bmm, chunk scan): the
  per-chunk states never touch device memory, so the forward moves x, B, C, dt, z in and y out, nothing else.
  Sequences too long for the grid are cut into segments: a pre-pass writes each segment's own end state
  (zero start) and each segment combines the ones before it (`incoming_state`).
- v2: the segment pre-pass updates its state with hi/lo split products, as the backward does (it feeds the
  backward's recomputed states); the main kernel keeps one bf16 product (y and the final state are within bf16
  tolerance without it).
- v3: the main kernel walks dstate in blocks of SUB_N = 64 rows inside each chunk (the state a tuple of (SUB_N, P)
  tiles): per block, B Cᵀ and C h accumulate and the block's state is updated, so one (Q, SUB_N) block of B and C
  is live instead of (Q, dstate) tiles as large as the state at dstate 256. Also: the (Q, Q) tile indexed
  [input i, output j] so dt_i scales rows (as a column factor the compiler recomputed softplus(dt) for every
  column a thread held, as in bwd.py v4), the update's weights w on x's rows (Bᵀ (w o x), one (Q, P) product
  instead of a (Q, dstate) one; one bf16 rounding either way), tiles addressed from the chunk's first row
  (tiles.chunk_rows) and the (Q, Q) decays by tiles.exp_ftz. Same function to float32 rounding. sm_90 compiled on a
  CPU machine (kernel_resources_cpu.py --ssd-grid --aligned; no GPU timing yet), headdim 64, hot-loop instructions
  a thread / LDL+STL among them: n256 (32,8,2) 2508/80 -> 1344/0, (16,4,2) 2751/110 -> 1305/0, (16,8,2)
  2381/75 -> 1180/0; n128 (64,8,2) 2229/58 -> 1294/3, (32,4,2) 2245/41 -> 1231/0; n64 (64,4,2) 2234/0 ->
  1512/0, (16,4,2) 1616/0 -> 816/0. Every config: benchmarks/results/ssd-fwd-large-dstate-sm90-cpu-2026-12-07.md.
- v4: the segment pre-pass walks its chunks last to first with the decay from each row to the segment's end in
  the row's weight, so its state is a plain sum of products, never rescaled (h <- exp(sum a) h cost a multiply-add
  per state element a chunk), addressed from the chunk's first row without row masks (every chunk before a
  sequence's last segment is full). It keeps one (N, P) tile: its B goes from shared memory into the product, and
  64-row blocks of dstate compiled to more instructions, not fewer. Same function to float32 rounding. sm_90 CPU
  compile, hot-loop instructions a thread / registers: n64 (64,4,2) 525/173 -> 431/132; n128 (64,8,2) 408/158
  -> 314/105, (32,4,2) 495/128 -> 352/102; n256 (32,8,2) 437/128 -> 296/104, (16,4,2) 615/168 -> 406/138; no
  spills in any config the tuner offers (same results file).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmkit.ops.dispatch import interpreting

from .plan import FWD_SUB_N, block_n, configs, make_plan, pick, tuning_shape
from .tiles import (chunk_decay, chunk_rows, dot_split, exp_ftz, head_tiles, incoming_state, load_skip, load_tile,
                    program_segment, seq_bounds, state_tile_offsets)


# Length arguments are not specialized: Triton would compile a variant of every config for each class of a
# length (== 1, divisible by 16, other), a stall of seconds at a server's first prompt of each class.
@triton.jit(do_not_specialize=("seqlen", "nseg", "seg_chunks"))
def _segment_state_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, cu_ptr, segst_ptr, seglog_ptr,
                          seqlen, nheads, headdim, ngroups, dstate, nseg, seg_chunks, dt_lo, dt_hi,
                          SOFTPLUS: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr,
                          BLOCK_N: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr):
    """Each segment's own end state from a zero start, and its total log-decay (all but the last segment).

    The end state is h = sum_i exp(a_{i+1} + ... + a_last) dt_i B_i x_iᵀ over the segment's rows i. The chunks
    are walked last to first, so the decay from each row to the segment's end (<= 1: nothing overflows) goes
    into the row's weight and h is a plain sum of products: the tensor-core accumulator carries over from chunk
    to chunk, never rescaled (the recursion h <- exp(sum a) h + Bᵀ (w o x) multiplied the whole state by the
    chunk's decay after each product). The state stays one (N, P) tile: B goes from shared memory straight into
    the product, so blocks of dstate (as in the main walk) would only add layout work (sm_90: more instructions
    for 64-row blocks, within 4% for 128-row ones). Every chunk before a sequence's last segment is full: no row
    masks."""
    h, pb, seq, seg = program_segment(nheads, headdim, nseg, BLOCK_P)
    start, end = seq_bounds(cu_ptr, seq, seqlen)
    nchunks = tl.cdiv(end - start, Q)
    if seg < tl.cdiv(nchunks, seg_chunks) - 1:
        g, ps, ns, pmask, nmask, qs = head_tiles(h, pb, nheads, ngroups, headdim, dstate, BLOCK_P, BLOCK_N, Q)
        A = tl.load(A_ptr + h).to(tl.float32)
        dtype = x_ptr.dtype.element_ty
        full = qs < Q
        S = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
        later = 0.0  # log-decay from the end of the current chunk to the end of the segment
        last = seg * seg_chunks + seg_chunks - 1
        for i in range(0, seg_chunks):
            row0 = start + (last - i) * Q
            dtv, a, cum, total = chunk_decay(dt_ptr + row0 * nheads, bias_ptr, qs, full, h, nheads, dt_lo, dt_hi, A,
                                             SOFTPLUS)
            x = load_tile(x_ptr + row0 * (nheads * headdim), qs, full, nheads * headdim, h * headdim, ps, pmask)
            Bt = load_tile(B_ptr + row0 * (ngroups * dstate), qs, full, ngroups * dstate, g * dstate, ns, nmask)
            w = tl.exp(later + total - cum) * dtv
            S = dot_split(tl.trans(Bt), x.to(tl.float32) * w[:, None], dtype, SPLIT, PREC, acc=S)
            later += total
        idx = (seq.to(tl.int64) * nseg + seg) * nheads + h
        offs = state_tile_offsets(ps, ns, headdim, dstate)
        tl.store(segst_ptr + idx * headdim * dstate + offs, S, mask=nmask[:, None] & pmask[None, :])
        if pb == 0:
            tl.store(seglog_ptr + idx, later)


@triton.jit
def state_blocks(init_ptr, segst_ptr, seglog_ptr, seq, seg, nseg, h, nheads, ps, ns, pmask, headdim, dstate,
                 BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, BLOCK_P: tl.constexpr):
    """The state entering the segment as a tuple of BLOCK_N // SUB_N (SUB_N, P) float32 tiles, rows k SUB_N + ns."""
    S = ()
    for k in tl.static_range(BLOCK_N // SUB_N):
        nk = k * SUB_N + ns
        S = S + (incoming_state(init_ptr, segst_ptr, seglog_ptr, seq, seg, nseg, h, nheads, ps, nk, pmask,
                                nk < dstate, headdim, dstate, SUB_N, BLOCK_P),)
    return S


@triton.jit(do_not_specialize=("seqlen", "nseg", "seg_chunks"))
def _ssd_fwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, cu_ptr,
                    segst_ptr, seglog_ptr, y_ptr, final_ptr,
                    seqlen, nheads, headdim, ngroups, dstate, nseg, seg_chunks, dt_lo, dt_hi,
                    SOFTPLUS: tl.constexpr, D_PER_P: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr,
                    BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, PREC: tl.constexpr, PTX: tl.constexpr):
    """y for one (segment, head-dim block, head); the last segment of each sequence also writes its final state.

    The state is BLOCK_N // SUB_N tiles of (SUB_N, BLOCK_P); each chunk walks them in turn, so only one
    (Q, SUB_N) block of B and of C is live at a time: C Bᵀ and C h are sums over the blocks of dstate."""
    h, pb, seq, seg = program_segment(nheads, headdim, nseg, BLOCK_P)
    start, end = seq_bounds(cu_ptr, seq, seqlen)
    nchunks = tl.cdiv(end - start, Q)
    last_seg = tl.maximum(tl.cdiv(nchunks, seg_chunks), 1) - 1
    if seg <= last_seg:
        g, ps, ns, pmask, nmask, qs = head_tiles(h, pb, nheads, ngroups, headdim, dstate, BLOCK_P, SUB_N, Q)
        causal = qs[:, None] <= qs[None, :]
        A = tl.load(A_ptr + h).to(tl.float32)
        dtype = x_ptr.dtype.element_ty
        S = state_blocks(init_ptr, segst_ptr, seglog_ptr, seq, seg, nseg, h, nheads, ps, ns, pmask, headdim, dstate,
                         BLOCK_N, SUB_N, BLOCK_P)
        if D_ptr is not None:
            Dv = load_skip(D_ptr, h, headdim, ps, pmask, D_PER_P)
        logdecay = 0.0
        c1 = tl.minimum(seg * seg_chunks + seg_chunks, nchunks)
        for c in range(seg * seg_chunks, c1):
            row0, rmask = chunk_rows(start, end, c, qs, Q)
            dtv, a, cum, total = chunk_decay(dt_ptr + row0 * nheads, bias_ptr, qs, rmask, h, nheads, dt_lo, dt_hi, A,
                                             SOFTPLUS)
            logdecay += total
            x = load_tile(x_ptr + row0 * (nheads * headdim), qs, rmask, nheads * headdim, h * headdim, ps, pmask)
            # (2)+(3) the update's weights on x's rows: (B o w)ᵀ x = Bᵀ (w o x)
            xw = (x.to(tl.float32) * (tl.exp(total - cum) * dtv)[:, None]).to(dtype)
            decay = tl.exp(total)
            BC = tl.zeros((Q, Q), dtype=tl.float32)
            yo = tl.zeros((Q, BLOCK_P), dtype=tl.float32)
            T = ()
            for k in tl.static_range(BLOCK_N // SUB_N):
                nk = k * SUB_N + ns
                Ct = load_tile(C_ptr + row0 * (ngroups * dstate), qs, rmask, ngroups * dstate, g * dstate, nk,
                               nk < dstate)
                Bt = load_tile(B_ptr + row0 * (ngroups * dstate), qs, rmask, ngroups * dstate, g * dstate, nk,
                               nk < dstate)
                BC = tl.dot(Bt, tl.trans(Ct), acc=BC, input_precision=PREC)
                # (4) the entering state's share (decayed from the chunk start below)
                yo = tl.dot(Ct, S[k].to(dtype), acc=yo, input_precision=PREC)
                # (2)+(3) this block of the state leaving the chunk
                T = T + (tl.dot(tl.trans(Bt), xw, acc=decay * S[k], input_precision=PREC),)
            S = T
            # (1) diagonal block, indexed [input i, output j] so that dt_i scales rows:
            # scores[i, j] = B_i.C_j exp(cum_j - cum_i) dt_i for i <= j
            Lt = exp_ftz(tl.where(causal, cum[None, :] - cum[:, None], float("-inf")), PTX)
            scores = (BC * Lt * dtv[:, None]).to(dtype)
            y = tl.dot(tl.trans(scores), x, acc=tl.exp(cum)[:, None] * yo, input_precision=PREC)
            if D_ptr is not None:
                y += x.to(tl.float32) * Dv
            if z_ptr is not None:
                zt = load_tile(z_ptr + row0 * (nheads * headdim), qs, rmask, nheads * headdim, h * headdim, ps,
                               pmask).to(tl.float32)
                y *= zt * tl.sigmoid(zt)
            offs = qs[:, None] * (nheads * headdim) + h * headdim + ps[None, :]
            tl.store(y_ptr + row0 * (nheads * headdim) + offs, y.to(y_ptr.dtype.element_ty),
                     mask=rmask[:, None] & pmask[None, :])
        if seg == last_seg:
            base = (seq.to(tl.int64) * nheads + h) * headdim * dstate
            for k in tl.static_range(BLOCK_N // SUB_N):
                nk = k * SUB_N + ns
                offs = state_tile_offsets(ps, nk, headdim, dstate)
                tl.store(final_ptr + base + offs, S[k], mask=(nk < dstate)[:, None] & pmask[None, :])
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
                              *scalars, SOFTPLUS=dt_softplus, D_PER_P=D is not None and D.ndim == 2,
                              SUB_N=cfg.get("SUB_N", min(bn, FWD_SUB_N)), PTX=not interpreting(), **meta)

    if config is None:
        key = (x.dtype, tuning_shape(plan), headdim, dstate, ngroups, nheads, D is not None, z is not None)
        config = pick("fwd", key, configs(headdim, dstate, "fwd"), run, x.device, work=x.numel())
    run(config)
    return y, final, plan, segst, seglog
