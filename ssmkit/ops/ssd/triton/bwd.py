"""Chunked SSD backward in Triton: two walks over the chunks, one forward in time and one in reverse.

The gradient of y = SSM(x) is the same SSD structure run backwards: the adjoint g_t of the state obeys
g_t = dy_t ⊗ C_t + exp(a_{t+1}) g_{t+1}, and dx_t = dt_t g_t B_t, dB_t = dt_t g_tᵀ x_t, dC_t = h_tᵀ dy_t.
The forward walk recomputes h (for dC and, with a gate, y for dz); the reverse walk carries g (dx, dB, dh0).
Each walk also writes its share of the decay gradient's parts, which bwd_dt.py sums into d dt, dA, d dt_bias.

Version history
- v1: per-head dB, dC partials in float32 (one per head-dim block), summed over heads of a group in torch;
  segments as in the forward, with a pre-pass for each segment's own adjoint (`outgoing_adjoint`).
- v2: the decay gradient from pair sums (bwd_dt.py) and hi/lo split products (`dot_split`) for dy, the
  state and adjoint updates and the state products: with single bf16 roundings dA was 5e-2..3e-1 off on an H100.
  Configs with num_stages=1 and a head-dim block below 64 gave wrong results or illegal addresses under
  Triton 3.6 on an H100 (forward and backward alike), so the tuner no longer offers num_stages=1.
- v3: <dfinal, h_T>, which enters the decay gradient of every token, comes from the forward walk's split-product
  state instead of the forward kernel's single-rounded final state: bf16 dA was still 3.6e-2..2.0e-1 off in 4 of
  the H100 GPU tests (float16 under the interpreter: 1.1e-2 -> 3.2e-5 at the same shape); one dot-free reduction
  per (sequence, head, head-dim block), and the autograd Function no longer saves the final state.
- v4: fewer live tiles and instructions a chunk in both walks (same values up to float32 rounding). dc: the
  (Q, Q) tiles are indexed [input i, output j] (xdy = x dyᵀ, BC, Ldt), so dt_i scales rows: as a column factor,
  Triton recomputed the whole effective dt (load, softplus, clamp) for every column a thread holds; the
  intra-chunk decay-gradient pairs are the sums over outputs minus the sums over inputs of the strictly causal
  M, then one scan of Q sums, instead of a cumsum along every row of M (two (Q, Q) round trips through shared
  memory); y_off and its sums come first and the dC accumulator starts from exp(cum) dy Sᵀ, so the entering
  state's products never meet a (Q, Q) tile; with a gate, y and dz come before the (Q, Q) work. dx: BG first,
  B·C Lt straight to its bf16 operand, gB accumulated onto BG, dB last. Both: the Q² decay factors by
  ex2.approx.ftz (tiles.exp_ftz), tiles addressed from the chunk's first row (tiles.chunk_rows), dot_split's two
  products in one accumulator, and no split of dy without a gate (dy is then dout, already in the dtype: the
  low part was zero). sm_90 compiled on a CPU machine (kernel_resources_cpu.py --ssd-bwd-grid --aligned; no GPU
  timing yet), ungated as the Mamba-2 layer calls it, headdim 64, dstate 64, hot-loop instructions a thread /
  LDL+STL among them / spill bytes: dc (64,4,2) 3603/284/744 -> 1890/20/88, (32,4,2) 3168/56/240 -> 1522/0/0,
  (32,8,2) 2295/27/120 -> 1407/0/0; dx (64,4,2) 2370/277/776 -> 2043/172/568, (32,4,2) 1829/44/200 ->
  1547/36/184. Every config, gated too: benchmarks/results/ssd-bwd-sm90-cpu-2026-12-07.md.
  On an H100: dc 1932 -> 899 us, dx 1959 -> 1319 us at L = 1K (benchmarks/results/ssd-bwd-spills-h100-2026-12-07.md).
- v5: dB and dC added by the walks into one float32 (token, group, dstate) buffer (tiles.store_group_grad,
  atomics) instead of per-head, per head-dim-block partials summed by torch: 2 x 537 MB of float32 fewer through
  HBM at the benchmark shape, fwd + bwd 3.3 -> 2.7 ms at L = 1K on an H100
  (benchmarks/results/ssd-bwd-atomic-h100-2026-12-07.md). Not bit-reproducible; under
  torch.use_deterministic_algorithms(True) the partials remain.
- v6: fewer instructions a chunk in both walks (same values up to float32 rounding, a few ulps in the decays).
  The walks store per-token decay-gradient increments (4 parts, not 5) and bwd_dt.py scans them along the chunk:
  dc's two scans and one sum and dx's scan of Q values a chunk, each through shared memory, are gone. The (Q, Q)
  decays are ex2.approx.ftz of base-2 cumulative decays scaled once a row (_decay2), and dc folds log2 dt_i
  (lg2.approx) into Ldt's exponent instead of multiplying the tile. dx reduces dD after the adjoint update.
  sm_90 compiled on a CPU machine (no GPU timing yet), ungated, dstate 64, hot-loop instructions / LDL+STL:
  dc (64,4,2) 1859/11 -> 1652/9, (32,4,2) 1508/0 -> 1320/0; dx (64,4,2) 2013/158 -> 1909/140, (32,4,2)
  1538/36 -> 1409/17; dstate 128 dx (64,4,2) 2943/402 -> 2672/284. Every config, gated too, and what was tried
  and dropped: benchmarks/results/ssd-bwd-dx-sm90-cpu-2026-12-07.md. dD and D dy remain the dx walk's largest
  cost (without D, dx (64,4,2) compiles to 1570/51).
- v7: the two walks are tuned apart (pick "bwd_dc", "bwd_dx"), each writing its two decay-gradient parts into
  its own (npb, 2, heads, tokens) buffer, so each may take its own head-dim block; at dstate 128 on an H100 dc took
  64 x 4 warps and dx 32 x 4 warps (benchmarks/results/ssd-fwd-v4-bwd-v6-segments-h100-2026-12-07.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmkit.ops.dispatch import interpreting

from .bwd_dt import launch_bwd_dt
from .fwd import dot_precision, dt_bounds
from .plan import block_n, configs, pick, tuning_shape
from .tiles import (chunk_decay, chunk_rows, dot_split, exp2_ftz, head_tiles, incoming_state, load_skip, load_tile,
                    outgoing_adjoint, program_segment, seq_bounds, state_tile_offsets, store_group_grad)


LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _chunk_tiles(x_ptr, B_ptr, C_ptr, dout_ptr, row0, rmask, qs, xs, bs, xcol, bcol, ps, pmask, ns, nmask):
    """Both walks' tiles of the chunk at token row0: x (Q, P), B and C (Q, N) as stored, dout (Q, P) in float32."""
    x = load_tile(x_ptr + row0 * xs, qs, rmask, xs, xcol, ps, pmask)
    Bt = load_tile(B_ptr + row0 * bs, qs, rmask, bs, bcol, ns, nmask)
    Ct = load_tile(C_ptr + row0 * bs, qs, rmask, bs, bcol, ns, nmask)
    dy = load_tile(dout_ptr + row0 * xs, qs, rmask, xs, xcol, ps, pmask).to(tl.float32)
    return x, Bt, Ct, dy


@triton.jit
def _decay2(c2, c2_in, mask, PTX: tl.constexpr):
    """(Q, Q) tile [input i, output j] of 2^(c2_j - c2_in_i) where mask, else 0: the decay from input i to output
    j when c2 is the chunk's cumulative log-decay in base 2 (cum log2(e), scaled once a row instead of once an
    element) and c2_in is c2 or c2 less a row factor's log2 (folded into the exponent, no multiply a tile).
    Subnormal results flush to 0 (tiles.exp2_ftz)."""
    return exp2_ftz(tl.where(mask, c2[None, :] - c2_in[:, None], float("-inf")), PTX)


@triton.jit
def _log2_approx(x, PTX: tl.constexpr):
    """log2(x) by lg2.approx (absolute error below 2^-22; log2(0) = -inf): tl.log2 is a software routine."""
    if PTX:
        return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return tl.log2(x)


@triton.jit
def _gated_dy(dout, zt):
    """dy = dout * silu(z): the gradient reaching y before the gate."""
    return dout * zt * tl.sigmoid(zt)


# Length arguments are not specialized: Triton would compile a variant of every config for each class of a
# length (== 1, divisible by 16, other), a stall of seconds at a server's first prompt of each class.
@triton.jit(do_not_specialize=("seqlen", "nseg", "seg_chunks"))
def _segment_adjoint_kernel(dout_ptr, dt_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, cu_ptr, segadj_ptr,
                            seqlen, nheads, headdim, ngroups, dstate, nseg, seg_chunks, dt_lo, dt_hi,
                            SOFTPLUS: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr,
                            BLOCK_N: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr):
    """Each segment's adjoint of its entering state from its own outputs: sum_t exp(cum_t) C_t ⊗ dy_t."""
    h, pb, seq, seg = program_segment(nheads, headdim, nseg, BLOCK_P)
    start, end = seq_bounds(cu_ptr, seq, seqlen)
    nchunks = tl.cdiv(end - start, Q)
    if (seg > 0) & (seg < tl.cdiv(nchunks, seg_chunks)):
        g, ps, ns, pmask, nmask, qs = head_tiles(h, pb, nheads, ngroups, headdim, dstate, BLOCK_P, BLOCK_N, Q)
        xs, bs = nheads * headdim, ngroups * dstate  # row strides of x, dout, z and of B, C
        A = tl.load(A_ptr + h).to(tl.float32)
        dtype = dout_ptr.dtype.element_ty
        G = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
        offset = 0.0
        c1 = tl.minimum(seg * seg_chunks + seg_chunks, nchunks)
        for c in range(seg * seg_chunks, c1):
            row0, rmask = chunk_rows(start, end, c, qs, Q)
            dtv, a, cum, total = chunk_decay(dt_ptr + row0 * nheads, bias_ptr, qs, rmask, h, nheads, dt_lo, dt_hi,
                                             A, SOFTPLUS)
            Ct = load_tile(C_ptr + row0 * bs, qs, rmask, bs, g * dstate, ns, nmask)
            dy = load_tile(dout_ptr + row0 * xs, qs, rmask, xs, h * headdim, ps, pmask).to(tl.float32)
            if z_ptr is not None:
                dy = _gated_dy(dy, load_tile(z_ptr + row0 * xs, qs, rmask, xs, h * headdim, ps,
                                             pmask).to(tl.float32))
            G += dot_split(tl.trans(Ct), dy * tl.exp(offset + cum)[:, None], dtype, SPLIT, PREC)
            offset += total
        idx = (seq.to(tl.int64) * nseg + seg) * nheads + h
        offs = state_tile_offsets(ps, ns, headdim, dstate)
        tl.store(segadj_ptr + idx * headdim * dstate + offs, G, mask=nmask[:, None] & pmask[None, :])


@triton.jit(do_not_specialize=("seqlen", "nseg", "seg_chunks", "ntok"))
def _bwd_dc_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, cu_ptr, segst_ptr,
                   seglog_ptr, dout_ptr, dfinal_ptr, dC_ptr, parts_ptr, cfinal_ptr, dz_ptr,
                   seqlen, nheads, headdim, ngroups, dstate, nseg, seg_chunks, dt_lo, dt_hi, ntok,
                   SOFTPLUS: tl.constexpr, D_PER_P: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_N: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr, PTX: tl.constexpr,
                   ATOMIC: tl.constexpr):
    """Forward walk: dC_t = h_tᵀ dy_t (per head, this head-dim block's share), dz, decay-gradient parts
    (npb, 2, nheads, ntok) and this block's share of <dfinal, h_T> from the recomputed final state (cfinal,
    (nseq, npb, nheads))."""
    h, pb, seq, seg = program_segment(nheads, headdim, nseg, BLOCK_P)
    start, end = seq_bounds(cu_ptr, seq, seqlen)
    nchunks = tl.cdiv(end - start, Q)
    nseg_seq = tl.maximum(tl.cdiv(nchunks, seg_chunks), 1)  # an empty sequence still has its h_T = h0
    if seg < nseg_seq:
        g, ps, ns, pmask, nmask, qs = head_tiles(h, pb, nheads, ngroups, headdim, dstate, BLOCK_P, BLOCK_N, Q)
        xs, bs = nheads * headdim, ngroups * dstate  # row strides of x, dout, z and of B, C
        anticausal = qs[:, None] <= qs[None, :]
        strict = qs[:, None] < qs[None, :]
        A = tl.load(A_ptr + h).to(tl.float32)
        dtype = x_ptr.dtype.element_ty
        S = incoming_state(init_ptr, segst_ptr, seglog_ptr, seq, seg, nseg, h, nheads, ps, ns, pmask, nmask,
                           headdim, dstate, BLOCK_N, BLOCK_P)
        if D_ptr is not None:
            Dv = load_skip(D_ptr, h, headdim, ps, pmask, D_PER_P)
        c1 = tl.minimum(seg * seg_chunks + seg_chunks, nchunks)
        for c in range(seg * seg_chunks, c1):
            row0, rmask = chunk_rows(start, end, c, qs, Q)
            dtv, a, cum, total = chunk_decay(dt_ptr + row0 * nheads, bias_ptr, qs, rmask, h, nheads, dt_lo, dt_hi,
                                             A, SOFTPLUS)
            x, Bt, Ct, dy = _chunk_tiles(x_ptr, B_ptr, C_ptr, dout_ptr, row0, rmask, qs, xs, bs, h * headdim,
                                         g * dstate, ps, pmask, ns, nmask)
            if z_ptr is not None:
                dout = dy
                zt = load_tile(z_ptr + row0 * xs, qs, rmask, xs, h * headdim, ps, pmask).to(tl.float32)
                sig = tl.sigmoid(zt)
                dy = dout * zt * sig
            ecum = tl.exp(cum)
            # Ldt[i, j] = exp(cum_j - cum_i) dt_i as one exp2: log2 dt_i joins the exponent (dt_i = 0 gives 0)
            c2 = cum * LOG2E
            c2dt = c2 - _log2_approx(dtv, PTX)
            y_off = ecum[:, None] * dot_split(Ct, S, dtype, SPLIT, PREC)  # the entering state's share of y
            # Decay gradient, pairs (i before the chunk, j >= k): v_j = dy_j . y_off_j, summed over j >= k as the
            # chunk's total (bwd_dt.py) less the sum over j < k (bwd_dt.py's scan of the part d - v below) ...
            v = tl.sum(dy * y_off, 1)
            # The (Q, Q) tiles, indexed [input i, output j] so that dt_i scales rows (as a column factor, dt was
            # recomputed, softplus and all, for every column a thread holds): BC[i, j] = B_i . C_j, xdy[i, j] =
            # x_i . dy_j (a gated dy split: it feeds the decay gradient), Ldt[i, j] = exp(cum_j - cum_i) dt_i, j >= i.
            # Each is folded into what needs it before the next chunk-sized work.
            BC = tl.dot(Bt, tl.trans(Ct), input_precision=PREC)
            if z_ptr is not None:  # y for the gate's gradient, first: then y_off need not outlive the (Q, Q) work
                Ldt = _decay2(c2, c2dt, anticausal, PTX)
                y = tl.dot(tl.trans((BC * Ldt).to(dtype)), x, input_precision=PREC) + y_off
                if D_ptr is not None:
                    y += x.to(tl.float32) * Dv
                dz = dout * y * sig * (1.0 + zt * (1.0 - sig))
                xy_offs = qs[:, None] * xs + h * headdim + ps[None, :]
                tl.store(dz_ptr + row0 * xs + xy_offs, dz.to(dz_ptr.dtype.element_ty),
                         mask=rmask[:, None] & pmask[None, :])
            if z_ptr is None:  # dy is dout, already in dtype: the low part of its split would be zero
                xdy = tl.dot(x, tl.trans(dy.to(dtype)), input_precision=PREC)
            else:
                xdy = dot_split(x, tl.trans(dy), dtype, SPLIT, PREC)
            Ldt = _decay2(c2, c2dt, anticausal, PTX)
            xdyL = xdy * Ldt
            # ... and the intra-chunk pairs (i < k <= j) of M[i, j] = xdy BC Ldt (i < j): sum_{i<k} of the sums over
            # outputs minus sum_{j<k} of the sums over inputs (the pairs with i < j < k cancel) -- two reductions
            # here, and the scan over k of d - v in bwd_dt.py instead of a scan along each output's row.
            M = tl.where(strict, xdyL * BC, 0.0)
            d = tl.sum(M, 1) - tl.sum(M, 0)
            dC = ecum[:, None] * tl.dot(dy.to(dtype), tl.trans(S.to(dtype)), input_precision=PREC)
            dC = tl.dot(tl.trans(xdyL.to(dtype)), Bt, acc=dC, input_precision=PREC)
            store_group_grad(dC_ptr, dC, row0, qs, rmask, ns, nmask, h, g, pb, nheads, ngroups, dstate, ntok, ATOMIC)
            pbase = parts_ptr + (pb * 2 * nheads + h).to(tl.int64) * ntok + row0 + qs
            tl.store(pbase, d - v, mask=rmask)
            tl.store(pbase + nheads * ntok, v, mask=rmask)
            w = tl.exp(total - cum) * dtv
            S = tl.exp(total) * S + dot_split(tl.trans(Bt), x.to(tl.float32) * w[:, None], dtype, SPLIT, PREC)
        if dfinal_ptr is not None:
            if seg == nseg_seq - 1:
                offs = state_tile_offsets(ps, ns, headdim, dstate)
                base = (seq.to(tl.int64) * nheads + h) * headdim * dstate
                dfin = tl.load(dfinal_ptr + base + offs, mask=nmask[:, None] & pmask[None, :], other=0.0)
                slot = (seq.to(tl.int64) * tl.cdiv(headdim, BLOCK_P) + pb) * nheads + h  # (nseq, npb, nheads)
                tl.store(cfinal_ptr + slot, tl.sum(tl.sum(dfin * S, 1), 0))


@triton.jit(do_not_specialize=("seqlen", "nseg", "seg_chunks", "ntok"))
def _bwd_dx_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, cu_ptr, segadj_ptr, seglog_ptr,
                   dfinal_ptr, dout_ptr, dx_ptr, dB_ptr, parts_ptr, dD_ptr, dinit_ptr,
                   seqlen, nheads, headdim, ngroups, dstate, nseg, seg_chunks, dt_lo, dt_hi, ntok,
                   SOFTPLUS: tl.constexpr, D_PER_P: tl.constexpr, Q: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_N: tl.constexpr, PREC: tl.constexpr, SPLIT: tl.constexpr, PTX: tl.constexpr,
                   ATOMIC: tl.constexpr):
    """Reverse walk: the adjoint g gives dx, dB (this head-dim block's share), dD, dh0 and decay-gradient parts
    (npb, 2, nheads, ntok)."""
    h, pb, seq, seg = program_segment(nheads, headdim, nseg, BLOCK_P)
    start, end = seq_bounds(cu_ptr, seq, seqlen)
    nchunks = tl.cdiv(end - start, Q)
    nseg_seq = tl.maximum(tl.cdiv(nchunks, seg_chunks), 1)
    if seg < nseg_seq:
        g, ps, ns, pmask, nmask, qs = head_tiles(h, pb, nheads, ngroups, headdim, dstate, BLOCK_P, BLOCK_N, Q)
        xs, bs = nheads * headdim, ngroups * dstate  # row strides of x, dout, z and of B, C
        anticausal = qs[:, None] <= qs[None, :]
        A = tl.load(A_ptr + h).to(tl.float32)
        dtype = x_ptr.dtype.element_ty
        G = outgoing_adjoint(dfinal_ptr, segadj_ptr, seglog_ptr, seq, seg, nseg_seq, nseg, h, nheads, ps, ns,
                             pmask, nmask, headdim, dstate, BLOCK_N, BLOCK_P)
        if D_ptr is not None:
            Dv = load_skip(D_ptr, h, headdim, ps, pmask, D_PER_P)
            dD = tl.zeros((BLOCK_P,), dtype=tl.float32)
        c0 = seg * seg_chunks
        c1 = tl.minimum(c0 + seg_chunks, nchunks)
        for i in range(0, c1 - c0):
            c = c1 - 1 - i
            row0, rmask = chunk_rows(start, end, c, qs, Q)
            dtv, a, cum, total = chunk_decay(dt_ptr + row0 * nheads, bias_ptr, qs, rmask, h, nheads, dt_lo, dt_hi,
                                             A, SOFTPLUS)
            x, Bt, Ct, dy = _chunk_tiles(x_ptr, B_ptr, C_ptr, dout_ptr, row0, rmask, qs, xs, bs, h * headdim,
                                         g * dstate, ps, pmask, ns, nmask)
            if z_ptr is not None:
                dy = _gated_dy(dy, load_tile(z_ptr + row0 * xs, qs, rmask, xs, h * headdim, ps,
                                             pmask).to(tl.float32))
            dyd = dy.to(dtype)
            ecum = tl.exp(cum)
            tail = tl.exp(total - cum)[:, None]  # decay from each position to the chunk's end
            xf = x.to(tl.float32)
            BG = tail * dot_split(Bt, G, dtype, SPLIT, PREC)  # outputs after the chunk
            # Decay gradient: pairs (i < k, j after the chunk), and q_t = x_t . g_t B_t for d dt (below).
            s_inter = dtv * tl.sum(xf * BG, 1)
            # (Q, Q) tiles go to bf16 operands as soon as they are made: Lt[i, j] = exp(cum_j - cum_i) for j >= i
            # (how far input i reaches output j) times B_i . C_j here and times x_i . dy_j for dB.
            c2 = cum * LOG2E
            Lt = _decay2(c2, c2, anticausal, PTX)
            BCL = (tl.dot(Bt, tl.trans(Ct), input_precision=PREC) * Lt).to(dtype)
            if z_ptr is None:  # dy is dout, already in dtype: the low part of its split would be zero
                gB = tl.dot(BCL, dyd, acc=BG, input_precision=PREC)  # (Q, P): g_i B_i
            else:
                gB = dot_split(BCL, dy, dtype, SPLIT, PREC, BG)
            dx = dtv[:, None] * gB
            if D_ptr is not None:
                dx += Dv * dy
            xy_offs = qs[:, None] * xs + h * headdim + ps[None, :]
            tl.store(dx_ptr + row0 * xs + xy_offs, dx.to(dx_ptr.dtype.element_ty), mask=rmask[:, None] & pmask[None, :])
            pbase = parts_ptr + (pb * 2 * nheads + h).to(tl.int64) * ntok + row0 + qs
            tl.store(pbase, s_inter, mask=rmask)
            tl.store(pbase + nheads * ntok, tl.sum(xf * gB, 1), mask=rmask)
            xdyL = (tl.dot(x, tl.trans(dyd), input_precision=PREC) * Lt).to(dtype)
            dB = tl.dot(xdyL, Ct, acc=tail * tl.dot(x, tl.trans(G.to(dtype)), input_precision=PREC),
                        input_precision=PREC)
            dB *= dtv[:, None]
            store_group_grad(dB_ptr, dB, row0, qs, rmask, ns, nmask, h, g, pb, nheads, ngroups, dstate, ntok, ATOMIC)
            G = tl.exp(total) * G + dot_split(tl.trans(Ct), dy * ecum[:, None], dtype, SPLIT, PREC)
            if D_ptr is not None:
                dD += tl.sum(dy * xf, 0)
        if D_ptr is not None:
            tl.store(dD_ptr + ((seq.to(tl.int64) * nseg + seg) * nheads + h) * headdim + ps, dD, mask=pmask)
        if dinit_ptr is not None:
            if seg == 0:
                offs = state_tile_offsets(ps, ns, headdim, dstate)
                base = (seq.to(tl.int64) * nheads + h) * headdim * dstate
                tl.store(dinit_ptr + base + offs, G, mask=nmask[:, None] & pmask[None, :])


def atomic_group_grads() -> bool:
    """Whether the walks add dB and dC straight into one float32 (token, group) buffer with atomics (fast, not
    bit-reproducible) instead of writing per-head partials summed by torch (two fp32 (npb, tokens, heads, dstate)
    tensors through HBM). torch.use_deterministic_algorithms(True) selects the partials."""
    return not torch.are_deterministic_algorithms_enabled()


def ssd_bwd(dout, dfinal, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit, initial_state, cu_seqlens, plan,
            segst, seglog, *, config=None):
    """Gradients of (y, final_state) -> every input, given the forward's plan and segment states.

    dout like x (contiguous); dfinal (nseq, nheads, headdim, dstate) or None.
    Returns (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_state); None where the input was None.
    """
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    ntok = batch * seqlen
    lo, hi = dt_bounds(dt_limit)
    bn = block_n(dstate)
    prec = dot_precision(x.dtype)
    ptx = x.device.type == "cuda" and not interpreting()  # inline PTX (exp_ftz) only where it is compiled
    f32 = dict(device=x.device, dtype=torch.float32)
    segadj = None
    if plan.nseg > 1:
        segadj = torch.empty(plan.nseq, plan.nseg, nheads, headdim, dstate, **f32)
    dx = torch.empty_like(x)
    dz = torch.empty_like(z) if z is not None else None
    dinit = torch.empty(plan.nseq, nheads, headdim, dstate, **f32) if initial_state is not None else None
    dD_part = torch.zeros(plan.nseq * plan.nseg, nheads, headdim, **f32) if D is not None else None
    scalars = (seqlen, nheads, headdim, ngroups, dstate, plan.nseg, plan.seg_chunks, lo, hi)
    atomic = atomic_group_grads()
    d_per_p = D is not None and D.ndim == 2
    split = x.dtype != torch.float32
    bufs = {}

    def meta(cfg):
        return dict(Q=plan.Q, BLOCK_P=cfg["BLOCK_P"], BLOCK_N=bn, PREC=prec, num_warps=cfg["num_warps"],
                    num_stages=cfg["num_stages"])

    def grad_buffer(name, npb):
        """dB or dC: (tokens, groups, dstate) for the atomics, zeroed for every run (the tuner runs each config
        more than once); else per head-dim block and head partials."""
        if atomic:
            bufs[name] = torch.zeros(ntok, ngroups, dstate, **f32)
        elif bufs.get(name) is None or bufs[name].shape[0] != npb:
            bufs[name] = torch.empty(npb, ntok, nheads, dstate, **f32)
        return bufs[name]

    def parts(name, npb):
        """A walk's two decay-gradient parts a token, (npb, 2, nheads, ntok)."""
        if bufs.get(name) is None or bufs[name].shape[0] != npb:
            bufs[name] = torch.empty(npb, 2, nheads, ntok, **f32)
        return bufs[name]

    def run_dc(cfg):
        npb = triton.cdiv(headdim, cfg["BLOCK_P"])
        cfinal = None if dfinal is None else torch.empty(plan.nseq, npb, nheads, **f32)
        bufs["cfinal"] = cfinal
        grid = (plan.nseq * plan.nseg * npb * nheads,)
        _bwd_dc_kernel[grid](x, dt, A, B, C, D, z, dt_bias, initial_state, cu_seqlens, segst, seglog, dout,
                             dfinal, grad_buffer("dC", npb), parts("dc_parts", npb), cfinal, dz, *scalars, ntok,
                             SOFTPLUS=dt_softplus, D_PER_P=d_per_p, SPLIT=split, PTX=ptx, ATOMIC=atomic, **meta(cfg))

    def run_dx(cfg):
        npb = triton.cdiv(headdim, cfg["BLOCK_P"])
        grid = (plan.nseq * plan.nseg * npb * nheads,)
        if segadj is not None:
            _segment_adjoint_kernel[grid](dout, dt, A, C, z, dt_bias, cu_seqlens, segadj, *scalars,
                                          SOFTPLUS=dt_softplus, SPLIT=split, **meta(cfg))
        _bwd_dx_kernel[grid](x, dt, A, B, C, D, z, dt_bias, cu_seqlens, segadj, seglog, dfinal, dout, dx,
                             grad_buffer("dB", npb), parts("dx_parts", npb), dD_part, dinit, *scalars, ntok,
                             SOFTPLUS=dt_softplus, D_PER_P=d_per_p, SPLIT=split, PTX=ptx, ATOMIC=atomic, **meta(cfg))

    # The two walks are tuned apart: each keeps the head-dim block and warps that suit its own registers.
    dc_config = dx_config = config
    if config is None:
        key = (x.dtype, tuning_shape(plan), headdim, dstate, ngroups, nheads, D is not None, z is not None)
        candidates = configs(headdim, dstate, "bwd")
        dc_config = pick("bwd_dc", key, candidates, run_dc, x.device, work=x.numel())
        dx_config = pick("bwd_dx", key, candidates, run_dx, x.device, work=x.numel())
    run_dc(dc_config)
    run_dx(dx_config)

    # <dfinal, h_T> enters every token's decay gradient, so it takes the backward's split-product h_T, not
    # the forward's single-rounded `final` (with that, bf16 dA was 3.6e-2..2.0e-1 off in the H100 GPU tests).
    cfinal = None if dfinal is None else bufs["cfinal"].sum(1).contiguous()
    ddt = torch.empty_like(dt)
    dA_part = torch.empty(plan.nseq, nheads, **f32)
    dbias_part = torch.empty(plan.nseq, nheads, **f32)
    launch_bwd_dt(dt, dt_bias, A, cu_seqlens, bufs["dc_parts"], bufs["dx_parts"], cfinal, plan, dt_softplus, lo,
                  hi, ddt, dA_part, dbias_part)
    hpg = nheads // ngroups
    if atomic:
        dB = bufs["dB"].view(batch, seqlen, ngroups, dstate).to(B.dtype)
        dC = bufs["dC"].view(batch, seqlen, ngroups, dstate).to(C.dtype)
    else:
        dB = bufs["dB"].view(-1, batch, seqlen, ngroups, hpg, dstate).sum((0, 4)).to(B.dtype)
        dC = bufs["dC"].view(-1, batch, seqlen, ngroups, hpg, dstate).sum((0, 4)).to(C.dtype)
    dA = dA_part.sum(0).to(A.dtype)
    dbias = dbias_part.sum(0).to(dt_bias.dtype) if dt_bias is not None else None
    dD = None
    if D is not None:
        dD = dD_part.sum(0)
        dD = (dD if D.ndim == 2 else dD.sum(-1)).to(D.dtype)
    if dinit is not None:
        dinit = dinit.to(initial_state.dtype)
    return dx, ddt, dA, dB, dC, dD, dz, dbias, dinit
