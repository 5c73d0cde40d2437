"""Triton helpers shared by the selective scan kernels: the scan's combine rule, tile loads and the step size.

Version history
- v1: one place for what every kernel repeats, so the forward, the backward and their recomputations read the
  same bytes and round dt the same way (the backward recomputes states the forward produced).
- v2: exp2_approx, the decay without subnormal handling, and row_inputs, one row's unmasked loads (the
  forward's LOOP variant, fwd.py v3, and the row-walking backward, bwd_rows.py).
"""

import triton
import triton.language as tl

from ssmkit.ops.ssd.triton.tiles import softplus

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
def exp2_approx(x, PTX: tl.constexpr):
    """2^x by the hardware's approximation, flushing results below 2^-126 to 0 (ex2.approx.ftz): tl.exp2 adds
    three instructions an element to keep those as subnormals, which a decay of a state never needs. PTX=False
    (the interpreter, which runs no PTX) uses tl.exp2."""
    if PTX:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


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
    """(dt', dt + bias) for a (rows, channels) tile: dt' = softplus(dt + bias) or dt + bias, 0 on masked rows
    and channels (a masked row then neither decays nor feeds the state)."""
    raw = load_rows(dt_ptr, base, rows, rmask, s_l, ds, dmask) + bias[None, :]
    dtv = raw
    if SOFTPLUS:
        dtv = softplus(raw)
    return tl.where(rmask[:, None] & dmask[None, :], dtv, 0.0), raw


@triton.jit
def last_row(t, rows_local, LAST: tl.constexpr):
    """Row LAST of a (BLOCK_T, ...) tile as a (...) tensor."""
    return tl.sum(tl.where(rows_local[:, None, None] == LAST, t, 0.0), 0)


@triton.jit
def row_inputs(x_ptr, dt_ptr, B_ptr, bias, b, g, row, end, dc, nc, sx_b, sx_l, sdt_b, sdt_l, sB_b, sB_l, sB_g,
               SOFTPLUS: tl.constexpr):
    """Row `row` of dt' (channels,), dt' x (channels,), x (channels,), B (dstate,) and dt + bias (channels,), in
    float32, for the kernels that walk rows with a thread per channel. Loads take no masks (each mask costs
    predicate instructions in every row): channels `dc` and states `nc` are clamped in bounds by the caller,
    and a row at or past `end` reads row end - 1 and gets dt' = dt' x = 0, so it leaves the state as it is."""
    r = tl.minimum(row, end - 1)
    raw = tl.load(dt_ptr + b * sdt_b + r * sdt_l + dc).to(tl.float32) + bias
    dtv = raw
    if SOFTPLUS:
        dtv = softplus(raw)
    dtv = tl.where(row < end, dtv, 0.0)
    x = tl.load(x_ptr + b * sx_b + r * sx_l + dc).to(tl.float32)
    Bt = tl.load(B_ptr + b * sB_b + g * sB_g + r * sB_l + nc).to(tl.float32)
    return dtv, tl.where(row < end, dtv * x, 0.0), x, Bt, raw
