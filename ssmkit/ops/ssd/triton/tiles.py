"""Triton helpers shared by the SSD kernels: sequence bounds, the effective step size, chunk tiles and the
state that enters a segment (the short scan of section 6 of Dao & Gu 2024, done by each segment for itself).

Version history
- v1: one place for the pieces every kernel repeats, so the forward, the backward and the pre-passes read the
  same bytes the same way (the forward and backward must agree bit for bit on dt and the decay).
- v2: dot_split, a hi/lo two-product dot for the state updates the backward depends on (bf16 dA was 5e-2..3e-1
  off on an H100 with single-rounded states; see bwd.py).
- v3: program_segment, head_tiles, chunk_decay and load_skip: the prologue and the per-chunk decay every kernel
  opened with (five kernels, the same 15-25 lines each).
- v4: softplus through a short atanh series instead of the library log and an IEEE division (same float32
  result to rounding; the selective scan evaluates it for every channel of every row).
- v5: for the backward walks (bwd.py v4): dot_split with an accumulator (its two products chained in one, the
  forward's segment pre-pass included: float32 rounding of the sum changes, nothing else), chunk_rows (tiles
  addressed from the chunk's first row with int32 offsets) and exp_ftz (the decay factors without subnormal
  results, three instructions an element fewer than tl.exp; equal to it above 2^-126, so dt and the states
  still agree bit for bit with the forward's; only the backward's (Q, Q) decays use it).
"""

import triton
import triton.language as tl


@triton.jit
def seq_bounds(cu_ptr, seq, seqlen):
    """[start, end) of sequence `seq` in the packed token axis: batch rows when cu_ptr is None."""
    if cu_ptr is None:
        start = seq.to(tl.int64) * seqlen
        end = start + seqlen
    else:
        start = tl.load(cu_ptr + seq).to(tl.int64)
        end = tl.load(cu_ptr + seq + 1).to(tl.int64)
    return start, end


@triton.jit
def program_segment(nheads, headdim, nseg, BLOCK_P: tl.constexpr):
    """This program's (head, head-dim block, sequence, segment): the grid is sequences x segments x head-dim
    blocks x heads, heads fastest."""
    pid = tl.program_id(0)
    npb = tl.cdiv(headdim, BLOCK_P)
    ss = pid // (nheads * npb)
    return pid % nheads, (pid // nheads) % npb, ss // nseg, ss % nseg


@triton.jit
def head_tiles(h, pb, nheads, ngroups, headdim, dstate, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
               Q: tl.constexpr):
    """Head h's group g; block pb's head-dim columns ps and the state columns ns with their masks; the row offsets
    qs of a chunk."""
    ps = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    ns = tl.arange(0, BLOCK_N)
    return h // (nheads // ngroups), ps, ns, ps < headdim, ns < dstate, tl.arange(0, Q)


@triton.jit
def exp2_ftz(x, PTX: tl.constexpr):
    """2^x by the hardware's approximation, flushing results below 2^-126 to 0 (ex2.approx.ftz): tl.exp2 spends
    three more instructions an element keeping those as subnormals, which a decay factor never needs. PTX=False
    (the interpreter runs no PTX) uses tl.exp2."""
    if PTX:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def exp_ftz(x, PTX: tl.constexpr):
    """e^x as tl.exp computes it (ex2.approx of x log2(e)) but by exp2_ftz; PTX=False uses tl.exp."""
    if PTX:
        return exp2_ftz(x * 1.4426950408889634, True)
    else:
        return tl.exp(x)


@triton.jit
def chunk_rows(start, end, c, qs, Q: tl.constexpr):
    """Chunk c's first row (int64) and the mask of its rows inside [start, end). Tiles are addressed from a
    pointer moved to the first row plus int32 offsets: the offsets are then the same in every chunk, half the
    registers of int64 ones when the compiler keeps them across the chunk loop."""
    row0 = start + c * Q
    return row0, qs < tl.minimum(end - row0, Q).to(tl.int32)


@triton.jit
def chunk_decay(dt_ptr, bias_ptr, rows, rmask, h, nheads, dt_lo, dt_hi, A, SOFTPLUS: tl.constexpr):
    """A chunk's effective dt, its log-decays a = dt A, their running sum within the chunk and the chunk's total."""
    dtv = effective_dt(dt_ptr, bias_ptr, rows, rmask, h, nheads, dt_lo, dt_hi, SOFTPLUS)
    a = dtv * A
    return dtv, a, tl.cumsum(a, 0), tl.sum(a, 0)


@triton.jit
def load_skip(D_ptr, h, headdim, ps, pmask, D_PER_P: tl.constexpr):
    """The skip weight D of head h in float32: one per head-dim column (D_PER_P) or one for the head."""
    if D_PER_P:
        Dv = tl.load(D_ptr + h * headdim + ps, mask=pmask, other=0.0).to(tl.float32)
    else:
        Dv = tl.load(D_ptr + h).to(tl.float32)
    return Dv


@triton.jit
def softplus(v):
    """log(1 + e^v) = max(v, 0) + log1p(u), u = e^-|v| <= 1, with log1p(u) = 2 atanh(s), s = u / (2 + u) <= 1/3,
    summed as the odd series of atanh to s^15 (truncation below 2e-9 relative). One exp and one approximate
    division: the library log and IEEE division it replaces cost ~50 instructions an element, a third of a
    Mamba-1 scan's per-channel row (v4). Equals torch's softplus (threshold 20) to float32 rounding."""
    u = tl.exp(-tl.abs(v))
    s = tl.fdiv(u, 2.0 + u)
    s2 = s * s
    p = 1.0 / 15.0
    p = p * s2 + 1.0 / 13.0
    p = p * s2 + 1.0 / 11.0
    p = p * s2 + 1.0 / 9.0
    p = p * s2 + 1.0 / 7.0
    p = p * s2 + 1.0 / 5.0
    p = p * s2 + 1.0 / 3.0
    p = p * s2 + 1.0
    return tl.maximum(v, 0.0) + 2.0 * s * p


@triton.jit
def effective_dt(dt_ptr, bias_ptr, rows, rmask, h, nheads, dt_lo, dt_hi, SOFTPLUS: tl.constexpr):
    """softplus(dt + dt_bias) clamped to [dt_lo, dt_hi] in float32 for `rows`; 0 on masked rows (no decay)."""
    v = tl.load(dt_ptr + rows * nheads + h, mask=rmask, other=0.0).to(tl.float32)
    if bias_ptr is not None:
        v += tl.load(bias_ptr + h).to(tl.float32)
    if SOFTPLUS:
        v = softplus(v)
    v = tl.minimum(tl.maximum(v, dt_lo), dt_hi)
    return tl.where(rmask, v, 0.0)


@triton.jit
def load_tile(ptr, rows, rmask, row_stride, col0, cols, cmask):
    """A (rows, cols) tile of a row-major token-by-feature array, zeros where masked."""
    offs = rows[:, None] * row_stride + col0 + cols[None, :]
    return tl.load(ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0)


@triton.jit
def store_group_grad(ptr, val, row0, qs, rmask, ns, nmask, h, g, pb, nheads, ngroups, dstate, ntok,
                     ATOMIC: tl.constexpr):
    """One head's (Q, N) share of dB or dC for the chunk at token row0.

    ATOMIC: added into float32 (ntok, ngroups, dstate), which the caller zeroed: the heads of a group and the
    head-dim blocks meet there (in no fixed order, so not bit-reproducible). Otherwise stored as a partial in
    (npb, ntok, nheads, dstate) for the caller to sum in a fixed order.
    """
    mask = rmask[:, None] & nmask[None, :]
    if ATOMIC:
        offs = qs[:, None] * (ngroups * dstate) + ns[None, :]
        tl.atomic_add(ptr + (row0 * ngroups + g) * dstate + offs, val, mask=mask, sem="relaxed")
    else:
        offs = qs[:, None] * (nheads * dstate) + ns[None, :]
        tl.store(ptr + ((pb * ntok + row0) * nheads + h) * dstate + offs, val, mask=mask)


@triton.jit
def dot_split(a, b, dtype: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr, acc=None):
    """acc + a @ b for a float32 `b` rounded to `dtype` as hi + lo (two products, near-float32 accuracy) when
    SPLIT; acc None starts from zero.

    The decay gradient subtracts sums of many state-sized terms; one bf16 rounding of the states or of dy
    leaves it ~1e-1 off, so every state update and state product that feeds it goes through here.
    """
    hi = b.to(dtype)
    out = tl.dot(a, hi, acc=acc, input_precision=PREC)
    if SPLIT:
        out = tl.dot(a, (b - hi.to(tl.float32)).to(dtype), acc=out, input_precision=PREC)
    return out


@triton.jit
def state_tile_offsets(ps, ns, headdim, dstate):
    """Offsets of an (N, P) tile inside one (headdim, dstate) state stored row-major as (P, N)."""
    return ps[None, :] * dstate + ns[:, None]


@triton.jit
def incoming_state(init_ptr, segst_ptr, seglog_ptr, seq, seg, nseg, h, nheads, ps, ns, pmask, nmask,
                   headdim, dstate, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr):
    """The state entering segment `seg` of sequence `seq`, as an (N, P) float32 tile.

    segst holds each segment's own end state (from a zero start) and seglog its total log-decay, so
    h_in(seg) = sum_{m<seg} exp(sum_{m<l<seg} seglog_l) segst_m + exp(sum_{l<seg} seglog_l) h0.
    """
    offs = state_tile_offsets(ps, ns, headdim, dstate)
    smask = nmask[:, None] & pmask[None, :]
    size = headdim * dstate
    acc = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    logw = 0.0
    if segst_ptr is not None:
        for i in range(0, seg):
            m = seg - 1 - i
            idx = (seq.to(tl.int64) * nseg + m) * nheads + h
            acc += tl.exp(logw) * tl.load(segst_ptr + idx * size + offs, mask=smask, other=0.0)
            logw += tl.load(seglog_ptr + idx)
    if init_ptr is not None:
        acc += tl.exp(logw) * tl.load(init_ptr + (seq.to(tl.int64) * nheads + h) * size + offs, mask=smask,
                                      other=0.0).to(tl.float32)
    return acc


@triton.jit
def outgoing_adjoint(dfinal_ptr, segadj_ptr, seglog_ptr, seq, seg, nseg_seq, nseg, h, nheads, ps, ns, pmask,
                     nmask, headdim, dstate, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr):
    """The adjoint (gradient) of the state leaving segment `seg`, as an (N, P) float32 tile.

    segadj holds each segment's adjoint of its entering state from its own outputs only, so
    g_out(seg) = sum_{m>seg} exp(sum_{seg<l<m} seglog_l) segadj_m + exp(sum_{l>seg} seglog_l) dfinal.
    """
    offs = state_tile_offsets(ps, ns, headdim, dstate)
    smask = nmask[:, None] & pmask[None, :]
    size = headdim * dstate
    acc = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    logw = 0.0
    if segadj_ptr is not None:
        for m in range(seg + 1, nseg_seq):
            idx = (seq.to(tl.int64) * nseg + m) * nheads + h
            acc += tl.exp(logw) * tl.load(segadj_ptr + idx * size + offs, mask=smask, other=0.0)
            logw += tl.load(seglog_ptr + idx)
    if dfinal_ptr is not None:
        acc += tl.exp(logw) * tl.load(dfinal_ptr + (seq.to(tl.int64) * nheads + h) * size + offs, mask=smask,
                                      other=0.0).to(tl.float32)
    return acc
