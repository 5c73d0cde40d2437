"""Triton helpers shared by the selective scan kernels: the scan's combine rule, tile loads and the step size.

Version history
- v1: one place for what every kernel repeats, so the forward, the backward and their recomputations read the
  same bytes and round dt the same way (the backward recomputes states the forward produced).
- v2: exp2_approx, the decay without subnormal handling, and row_inputs, one row's unmasked loads (the
  forward's LOOP variant, fwd.py v3, and the row-walking backward, bwd_rows.py).
- v3: for the forward's rows (fwd.py v4): softplus_fast (no division: log1p by a fitted polynomial, one
  multifunction-unit instruction instead of two), silu_approx (the z gate), rcp_approx and widen (bf16 pairs to
  float32 in two instructions); row_inputs computes dt' with softplus_fast too, so the row-walking backward
  recomputes the states the forward's rows walked.
- v4: step_size (the tile-parallel configs and the tile backward) computes dt' with softplus_fast too (tl.exp2,
  keeping subnormals): one softplus for every scan kernel, where the tiles used ssd's atanh-series softplus.
- v5: exp2_approx gone for ssd's tiles.exp2_ftz (the same ex2.approx.ftz), one implementation for both operators.
"""

import triton
import triton.language as tl

from ssmkit.ops.ssd.triton.tiles import exp2_ftz

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def channel_tile(pid, nblk, ngroups, dpg, dstate, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """The (batch, group, channel block) a program owns, in the order every scan kernel launches them.

    Returns b (int64), ds (BLOCK_D,) channel indices, dmask, ns (BLOCK_N,) state indices, nmask, and the
    (BLOCK_D, BLOCK_N) state mask.
    """
    blk = pid % nblk
    g = (pid // nblk) % ngroups
    b = (pid // (nblk * ngroups)).to(tl.int64)
    dl = blk * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dl < dpg
    ds = g * dpg + dl
    ns = tl.arange(0, BLOCK_N)
    nmask = ns < dstate
    return b, g, ds, dmask, ns, nmask, dmask[:, None] & nmask[None, :]


@triton.jit
def rcp_approx(x, PTX: tl.constexpr):
    """1 / x by the hardware's reciprocal (rcp.approx.ftz, within 1 ulp): 1.0 / x adds a range check and two
    scalings an element for |x| > 2^126, which the callers' denominators never reach except as infinity, where
    both give 0. PTX=False uses 1.0 / x."""
    if PTX:
        return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return 1.0 / x


@triton.jit
def softplus_fast(v, PTX: tl.constexpr):
    """log(1 + e^v) = max(v, 0) + log1p(u), u = e^-|v| in (0, 1], with log1p(u) = u q(u): q of degree 9 fitted to
    log1p(u) / u on [0, 1] (relative error 4.7e-9; least squares reweighted toward the minimax fit). No division:
    one exp (ex2.approx.ftz under PTX) and 10 FMAs, where ssd's softplus (an atanh series in u / (2 + u)) also
    spends a reciprocal, the second instruction on the multifunction unit, which the scan forward's 16 decays a
    row already keep busy. float32 error against float64 on [-10, 10]: 1.9e-7 at most (softplus: 2.5e-7)."""
    u = exp2_ftz(tl.abs(v) * -1.4426950408889634, PTX)
    q = u * -0.00324402354 + 0.0198514573
    q = q * u - 0.0569595359
    q = q * u + 0.106036559
    q = q * u - 0.153055936
    q = q * u + 0.196759403
    q = q * u - 0.249541342
    q = q * u + 0.333299637
    q = q * u - 0.499999017
    q = q * u + 1.0
    return tl.maximum(v, 0.0) + u * q


@triton.jit
def channel_params(bias_ptr, D_ptr, ds, dmask, BLOCK_D: tl.constexpr):
    """(dt bias, D) of the channels `ds` in float32; zeros where the pointer is None."""
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if bias_ptr is not None:
        bias = tl.load(bias_ptr + ds, mask=dmask, other=0.0).to(tl.float32)
    Dv = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if D_ptr is not None:
        Dv = tl.load(D_ptr + ds, mask=dmask, other=0.0).to(tl.float32)
    return bias, Dv


@triton.jit
def combine(a1, b1, a2, b2):
    """Composition of h -> a1 h + b1, then h -> a2 h + b2 (the associative step of a linear recurrence)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def load_rows(ptr, base, rows, rmask, s_l, cols, cmask):
    """A float32 (rows, cols) tile of a (batch, seqlen, ..., cols) array with unit column stride; 0 where masked."""
    offs = base + rows.to(tl.int64)[:, None] * s_l + cols[None, :]
    return tl.load(ptr + offs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)


@triton.jit
def step_size(dt_ptr, base, rows, rmask, s_l, ds, dmask, bias, SOFTPLUS: tl.constexpr):
    """(dt', dt + bias) for a (rows, channels) tile: dt' = softplus(dt + bias) (softplus_fast, as the row walks)
    or dt + bias, 0 on masked rows and channels (a masked row then neither decays nor feeds the state)."""
    raw = load_rows(dt_ptr, base, rows, rmask, s_l, ds, dmask) + bias[None, :]
    dtv = raw
    if SOFTPLUS:
        dtv = softplus_fast(raw, False)
    return tl.where(rmask[:, None] & dmask[None, :], dtv, 0.0), raw


@triton.jit
def last_row(t, rows_local, LAST: tl.constexpr):
    """Row LAST of a (BLOCK_T, ...) tile as a (...) tensor."""
    return tl.sum(tl.where(rows_local[:, None, None] == LAST, t, 0.0), 0)


@triton.jit
def row_inputs(x_ptr, dt_ptr, B_ptr, bias, b, g, row, end, dc, nc, sx_b, sx_l, sdt_b, sdt_l, sB_b, sB_l, sB_g,
               SOFTPLUS: tl.constexpr, PTX: tl.constexpr = False):
    """Row `row` of dt' (channels,), dt' x (channels,), x (channels,), B (dstate,) and dt + bias (channels,), in
    float32, for the kernels that walk rows with a thread per channel. Loads take no masks (each mask costs
    predicate instructions in every row): channels `dc` and states `nc` are clamped in bounds by the caller,
    and a row at or past `end` reads row end - 1 and gets dt' = dt' x = 0, so it leaves the state as it is.
    dt' by softplus_fast, as the forward's row walk computes it (fwd.py v4)."""
    r = tl.minimum(row, end - 1)
    raw = tl.load(dt_ptr + b * sdt_b + r * sdt_l + dc).to(tl.float32) + bias
    dtv = raw
    if SOFTPLUS:
        dtv = softplus_fast(raw, PTX)
    dtv = tl.where(row < end, dtv, 0.0)
    x = tl.load(x_ptr + b * sx_b + r * sx_l + dc).to(tl.float32)
    Bt = tl.load(B_ptr + b * sB_b + g * sB_g + r * sB_l + nc).to(tl.float32)
    return dtv, tl.where(row < end, dtv * x, 0.0), x, Bt, raw


@triton.jit
def silu_approx(z, PTX: tl.constexpr):
    """z sigmoid(z) = z / (1 + 2^(-z log2 e)) by ex2.approx.ftz and rcp.approx.ftz (PTX; tl.sigmoid otherwise):
    tl.sigmoid's exp and IEEE division add a subnormal check and a range check an element. z -> -inf gives
    z * 0 = -0, z -> +inf gives z, as the exact form."""
    if PTX:
        return z * rcp_approx(1.0 + exp2_ftz(z * -1.4426950408889634, PTX), PTX)
    else:
        return z * tl.sigmoid(z)


@triton.jit
def widen(v, PTX: tl.constexpr):
    """v in float32. A bf16 tensor whose elements sit in pairs in one thread's registers (B and C of a row,
    dstate in-thread) widens a pair per two instructions (shl and and of the 32-bit word the vector load gave);
    the compiler's conversion spends three (a byte permute for the upper half first)."""
    if PTX and v.dtype == tl.bfloat16:
        return tl.inline_asm_elementwise("shl.b32 $0, $2, 16;\n\tand.b32 $1, $2, 0xffff0000;", "=r,=r,r", [v],
                                         dtype=tl.float32, is_pure=True, pack=2)
    else:
        return v.to(tl.float32)
