"""The forward's row walk (fwd.py's LOOP variant and its segment pass): a tile's loads, issued where each row is
walked or one tile ahead (PREFETCH), and the rows walked one by one on a (dstate, channels) state in registers,
whole channels per thread (Gu & Dao 2023, section 3.3.2).

Version history
- v1: moved out of fwd.py with its v5: tile_inputs (a tile's loads issued one tile ahead) and row_loads (each
  row's loads taken from them or issued where the row is walked) are new; the row body (row_update), the tile
  walk (loop_tile) and the clamps (row_indices) are fwd.py v4's, their loads split off into channel_row and
  group_row.
"""

import triton
import triton.language as tl

from ssmkit.ops.ssd.triton.tiles import exp2_ftz

from .tiles import silu_approx, softplus_fast, widen


@triton.jit
def row_indices(ds, dmask, g, dpg, dstate: tl.constexpr, BLOCK_N: tl.constexpr):
    """The channels and states the row walk reads, clamped in bounds so that its loads need no masks: channels
    past the group read its first one, padding states the last state (dstate == BLOCK_N: no clamp, which keeps
    the loads of B and C contiguous, one vector load each)."""
    dc = tl.where(dmask, ds, g * dpg)
    if dstate == BLOCK_N:
        nc = tl.arange(0, BLOCK_N)
    else:
        nc = tl.minimum(tl.arange(0, BLOCK_N), dstate - 1)
    return dc, nc


@triton.jit
def row_update(h, A2, bias, dt_raw, x_raw, B_raw, valid, SOFTPLUS: tl.constexpr, BOUNDED: tl.constexpr,
                PTX: tl.constexpr):
    """One row of the walk from its loads (tile_inputs: dt, x (channels,), B (BLOCK_N,) as stored):
    h <- exp(dt' A) h + dt' B x (ZOH for A, Euler for B) on the state h (dstate, channels); returns (h, dt', x)
    (channels,) float32. BOUNDED: a row that is not `valid` (at or past the end) gets dt' = 0 and leaves h as it
    is; otherwise no select is spent. A2 = A log2(e) as (dstate, channels)."""
    raw = dt_raw.to(tl.float32) + bias
    dtv = raw
    if SOFTPLUS:
        dtv = softplus_fast(raw, PTX)
    if BOUNDED:
        dtv = tl.where(valid, dtv, 0.0)
    x = x_raw.to(tl.float32)
    Bv = widen(B_raw, PTX)
    h = exp2_ftz(dtv[None, :] * A2, PTX) * h + Bv[:, None] * (dtv * x)[None, :]
    return h, dtv, x


@triton.jit
def tile_pointers(xb, dtb, zb, Bb, Cb, c, sx_l, sdt_l, sz_l, sB_l, sC_l, BLOCK_T: tl.constexpr):
    """The inputs at the first row of tile c, from pointers at the program's batch row, as (per-channel inputs
    (x, dt[, z]), per-group inputs (B[, C])): z and C only where given (no z; the segment pass reads no C)."""
    row0 = tl.cast(c, tl.int64) * BLOCK_T
    chan = (xb + row0 * sx_l, dtb + row0 * sdt_l)
    if zb is not None:
        chan = chan + (zb + row0 * sz_l,)
    grp = (Bb + row0 * sB_l,)
    if Cb is not None:
        grp = grp + (Cb + row0 * sC_l,)
    return chan, grp


@triton.jit
def channel_row(chan, r, dc, sx_l, sdt_l, sz_l):
    """Row r's per-channel loads (dt, x[, z]), each (channels,) as stored, from `chan` (tile_pointers).
    Unmasked: the channels are clamped in bounds (row_indices), r by the caller."""
    row = (tl.load(chan[1] + r * sdt_l + dc), tl.load(chan[0] + r * sx_l + dc))
    if len(chan) > 2:
        row = row + (tl.load(chan[2] + r * sz_l + dc),)
    return row


@triton.jit
def group_row(grp, r, nc, sB_l, sC_l):
    """Row r's per-group loads (B[, C]), each (BLOCK_N,) as stored, from `grp` (tile_pointers); unmasked."""
    row = (tl.load(grp[0] + r * sB_l + nc),)
    if len(grp) > 1:
        row = row + (tl.load(grp[1] + r * sC_l + nc),)
    return row


@triton.jit
def tile_inputs(tile, nrows, dc, nc, sx_l, sdt_l, sz_l, sB_l, sC_l, PREFETCH: tl.constexpr, BLOCK_T: tl.constexpr,
                 BOUNDED: tl.constexpr):
    """What PREFETCH loads of a tile ahead: a tuple of BLOCK_T rows, each (per-channel loads,) (PREFETCH 1) or
    (per-channel loads, per-group loads) (PREFETCH 2). BOUNDED: only the first `nrows` rows exist; the others
    read the last one."""
    rows = ()
    for i in tl.static_range(BLOCK_T):
        r = i
        if BOUNDED:
            r = tl.minimum(i, nrows - 1)
        row = (channel_row(tile[0], r, dc, sx_l, sdt_l, sz_l),)
        if PREFETCH == 2:
            row = row + (group_row(tile[1], r, nc, sB_l, sC_l),)
        rows = rows + (row,)
    return rows


@triton.jit
def row_loads(tile, rows, i, r, dc, nc, sx_l, sdt_l, sz_l, sB_l, sC_l):
    """Row i of a tile as (per-channel loads, per-group loads): taken from `rows` (tile_inputs) where it holds
    them, loaded here (from row r of `tile`) where not (rows None: nothing prefetched)."""
    if rows is None:
        chan = channel_row(tile[0], r, dc, sx_l, sdt_l, sz_l)
        grp = group_row(tile[1], r, nc, sB_l, sC_l)
    else:
        chan = rows[i][0]
        if len(rows[i]) > 1:
            grp = rows[i][1]
        else:
            grp = group_row(tile[1], r, nc, sB_l, sC_l)
    return chan, grp


@triton.jit
def loop_tile(tile, rows, yt, h, A2, bias, Dv, nrows, ds, dmask, dc, nc, nmask, dim, sx_l, sdt_l, sz_l, sB_l, sC_l,
               SOFTPLUS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BOUNDED: tl.constexpr,
               PTX: tl.constexpr):
    """A tile of the LOOP variant: its rows walked one by one, unrolled, the state h (dstate, channels) in
    registers; stores the tile's y rows at yt and returns the state after the tile. `tile`: tile_pointers;
    `rows`: what was loaded ahead (tile_inputs) or None. A row's loads not in `rows` are issued where it is
    walked, which leaves the compiler free to interleave them with the arithmetic (v4's code). BOUNDED: only
    the first `nrows` rows exist (the last, partial tile); the others read the last one, leave the state as it
    is and are not stored. Full tiles (BOUNDED=False) have no clamp or select in their rows."""
    tloc = tl.arange(0, BLOCK_T)
    Y = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for i in tl.static_range(BLOCK_T):
        r = i
        if BOUNDED:
            r = tl.minimum(i, nrows - 1)
        chan, grp = row_loads(tile, rows, i, r, dc, nc, sx_l, sdt_l, sz_l, sB_l, sC_l)
        h, dtv, x = row_update(h, A2, bias, chan[0], chan[1], grp[0], i < nrows, SOFTPLUS, BOUNDED, PTX)
        Cv = tl.where(nmask, widen(grp[1], PTX), 0.0)  # a padding state (clamped read) must not reach y
        y = tl.sum(h * Cv[:, None], 0) + Dv * x
        if len(chan) > 2:  # the z gate
            y *= silu_approx(chan[2].to(tl.float32), PTX)
        Y = tl.where(tloc[:, None] == i, y[None, :], Y)
    offs = tloc[:, None] * dim + ds[None, :]
    if BOUNDED:
        tl.store(yt + offs, Y.to(yt.dtype.element_ty), mask=(tloc < nrows)[:, None] & dmask[None, :])
    else:
        tl.store(yt + offs, Y.to(yt.dtype.element_ty), mask=dmask[None, :])
    return h


@triton.jit
def segment_tile(tile, rows, h, dsum, A2, bias, dc, nc, sx_l, sdt_l, sB_l, SOFTPLUS: tl.constexpr,
                  BLOCK_T: tl.constexpr, PTX: tl.constexpr):
    """A full tile of the segment pass (`tile`, `rows`: as loop_tile's): (h, sum of dt') after its rows."""
    for i in tl.static_range(BLOCK_T):
        chan, grp = row_loads(tile, rows, i, i, dc, nc, sx_l, sdt_l, 0, sB_l, 0)
        h, dtv, _ = row_update(h, A2, bias, chan[0], chan[1], grp[0], True, SOFTPLUS, False, PTX)
        dsum += dtv
    return h, dsum
