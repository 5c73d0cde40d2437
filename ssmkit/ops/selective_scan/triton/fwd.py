"""Fused selective scan forward in Triton (Gu & Dao 2023, section 3.3.2: the scan kept in fast memory).

One program per (batch row, group, block of channels, segment) walks its rows in tiles of BLOCK_T with its
(BLOCK_D, dstate) state in registers: dt' = softplus(dt + bias), a = exp(dt' A) (ZOH), b = dt' B x (Euler),
h = a h + b, y = C . h, then D x and the silu(z) gate. The LOOP configs walk a tile's rows one by one, the tile
configs scan the tile with tl.associative_scan. Only x, dt, B, C, z are read and y written; the states never reach
memory, except every CHECKPOINT_ROWS rows when the backward will need them.

Version history
- v1: tile-parallel scan (tl.associative_scan over the rows of a tile) instead of a token-by-token loop, so each
  step of the loop has BLOCK_T * BLOCK_D * dstate independent products in flight; the state leaving a tile is
  the tile's last row. Reads x, z, dt, B, C through their strides (the Mamba mixer's x and z are halves of one
  projection, B and C slices of another), so no copy precedes the kernel.
- v2: a LOOP variant (a config flag): inside each tile the rows are walked one by one, unrolled, each reading its
  row of x, dt, z, B, C straight from memory, so the state needs only (BLOCK_D, dstate) registers and no
  cross-thread scan; the unrolled row loads do not depend on the state and can be issued ahead. On an H100 the
  tile-parallel v1 reached 5% of the copy ceiling whatever its block sizes (compute-bound on the scan).
- v3: the LOOP variant, rebuilt from the H100 code the compiler emitted (sm_90 SASS, read on the CPU machine):
  (a) v2 stored each row's y before loading the next row, and a load may not move above a store to memory that
  might alias it, so every row waited a full memory round trip; now a tile's y rows collect in registers and
  are stored once per tile, and the loads of a tile's rows issue together. (b) v2's state tile spread dstate
  over the threads of a warp: each row's C . h took 4 rounds of shuffles and every row's B, C went through
  shared memory with a barrier; now each thread owns whole channels with their states in registers,
  so C . h is a sum in one thread (0 shuffles, 0 barriers per row). The state is loaded as (channels, dstate)
  with dstate's stride hidden from the compiler (a run-time 1) and transposed, which is what makes the compiler
  pick that arrangement. exp2 with A log2(e) saves a multiply per state element.
  (c) Segments: at small batch there are too few (row, channel block) programs to fill the GPU, so the
  sequence is cut into segments of whole checkpoint intervals. A first pass (_segment_state_kernel) walks
  each segment but the last from a zero state and writes its end state and its sum of dt'; each program of
  the main pass then composes the segments before its own (h <- exp(A sum dt') h + h_segment, exact in real
  arithmetic) to get its entering state. The extra pass reads x, dt and B once more.
  (d) Fewer instructions a row (3,344 -> 2,344 for a tile of 8 rows x 32 channels): unmasked loads (rows and
  channels clamped in bounds), dstate a compile-time constant, the decay by ex2.approx.ftz, softplus without the
  library log and IEEE division; 1, 2 or 4 channels a thread share each row's B and C loads; register-capped
  configs (maxnreg) trade a few spills for resident warps. On an H100, 16K tokens at dim 2048: 1.15-3.87 ms
  (v2) -> 0.58-0.79 ms.
- v4: the LOOP walk's instructions per channel and row cut from ~210 to ~145 (sm_90 SASS of the tile loop, config
  (4, 64, 1, maxnreg 128), compiled as a launch on contiguous bf16 tensors is specialized: 16-byte aligned
  pointers and strides; benchmarks/kernel_resources_cpu.py --aligned, whose "hot loop" column counts them).
  (a) Whole tiles walk without bounds: the row clamp and the selects of dt' are only in the last, partial tile
  (_loop_tile's BOUNDED; one row body, _row_update, for both and for the segment pass, whose tiles are all
  whole). (b) Rows addressed from a pointer per input and tile, not b s_b + r s_l in int64 per row and input.
  (c) The channels' contiguity hidden (`unit`, as dstate's stride since v3): launched on aligned tensors, v3's
  per-channel loads were vectorized in a layout of their own and every row paid 4 shuffles and ~10 selects to
  bring them to the state's (and a shared-memory round trip for y); now they stay in it. (d) B and C read
  unclamped when dstate == BLOCK_N, two 16-byte loads each instead of 16 2-byte ones, widened to float32 a pair
  per 2 instructions (tiles.widen). (e) dt' by tiles.softplus_fast (log1p by a fitted polynomial, no division:
  one multifunction-unit (MUFU) instruction fewer) and the z gate by ex2/rcp.approx.ftz (8 instructions fewer);
  results equal to float32 rounding, as the tests check. (f) Checkpoint tiles found by a counter, not
  c % ck_tiles (~20 instructions a tile).
  Hot loop per channel-row, --aligned, v3 -> v4 (registers a thread; warps an SM by registers; LDL/STL in the
  loop): capped (4, 64, 1, 128) 209.8 -> 144.8 (128; 16; 2 -> 0), (2, 64, 1, 128) 209.5 -> 150.2 (128; 16;
  2 -> 5), (4, 32, 1, 128) 266.8 -> 176.2 (128; 16; 0); uncapped (4, 64, 1) 216.6 -> 146.0 (254 -> 255; 8; 0),
  (8, 64, 1) 211.2 -> 144.9 (249 -> 255; 8; 0), (4, 128, 2) 216.0 -> 150.0 (254 -> 255; 8; 0), (4, 32, 1)
  266.2 -> 177.8 (96 -> 168; 21 -> 12; 0), (4, 256, 8) 259.0 -> 177.8 (128 -> 174; 16 -> 8; 0), (4, 128, 1)
  174.8 -> 146.6 (255; 8; 0 -> 170). MUFU 20 -> 19 per channel-row (16 decays, 1 for softplus, 2 for the gate).
  The segment pass: 136.4 -> 103.5 at (4, 64) and (2, 64) capped at 128 as those configs launch it (MUFU 18 ->
  17), 152.3 -> 119.5 at (4, 32); uncapped (4, 64) 137.1 -> 100.9 with 161 -> 245 registers (12 -> 8 warps).
  Tables: benchmarks/results/selective-scan-fwd-sm90-cpu-2026-12-07.md. On an H100 (its GPU tests passed) config
  (4, 64, 1, 128) ran 16K tokens at dim 2048 in 0.560 ms at b16 L1K (v3: 0.619, tuned) and 0.745 ms at b1 L16K
  (v3: 0.790): 6-10% for 30% fewer instructions, so the walk is bound by latency rather than issue; more segments
  did not help (128-row segments: 0.605 / 1.094 ms). mamba1-fwd-v4-h100-2026-12-07.md.
- v5: software pipelining of the LOOP walk, a config flag (PREFETCH) for the tuner to time against v4's walk: each
  full tile's loads issue one tile ahead, before the tile before it is walked, and reach the next iteration as
  loop-carried registers (fwd_walk.tile_inputs; the row walk moved to fwd_walk.py), so a program's next memory round
  trip overlaps its current tile's arithmetic instead of following it. PREFETCH 1 loads ahead the per-channel streams
  x, dt, z (the DRAM traffic); 2 also B and C (per group, read by every channel block, mostly cache hits). The last
  full tile is walked after the loop (nothing to load ahead, no clamp of the tile index in the loop), the partial tile
  loads its rows where it walks them (BOUNDED, as in v4); the segment pass prefetches the same way. Without PREFETCH
  the rows are loaded where walked, as in v4 (hot loop 1,158 -> 1,159 instructions at (4, 64, 1, 128)). Costs, sm_90
  --aligned hot loop per channel-row (registers; warps an SM; LDL/STL in the loop), without -> with: (4, 32, 1, 128)
  PREFETCH 1: 176.2 -> 178.5 (128; 16; 0 -> 0), (2, 32, 1, 128) 1: 182.0 -> 188.5 (128; 16; 0 -> 0), (1, 32, 1, 128)
  2: 196.0 -> 224.0 (128 -> 126; 16; 0), (2, 64, 1, 168) 1: 149.8 -> 154.5 (168; 12; 6 -> 0), (2, 64, 1) 1: 156.5 ->
  155.2 (254; 8; 0). The carried tile costs registers: with PREFETCH 1, (4, 64, 1, 128) keeps 89 spill instructions in
  its loop and (2, 64, 1, 128) 15, so those shapes get 168 registers or none; PREFETCH 2 carries B and C as 16-bit
  halves, packed again for widen (byte permutes: 1 -> 34 a row at (1, 32)), which only the one-channel, one-row tile
  holds without spills at 128. The segment pass at the same configs: 119.5 -> 120.2, 118.0 -> 122.5, 117.0 -> 134.0,
  102.0 -> 105.5, 100.0 -> 104.5 (159 -> 254 registers, 12 -> 8 warps). Not yet timed on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmkit.ops.ssd.triton.plan import pick

from .plan import CHECKPOINT_ROWS, block_n, configs, launch_options, multiprocessors, segment_length
from .fwd_walk import loop_tile, row_indices, segment_tile, tile_inputs, tile_pointers
from .tiles import LOG2E, channel_params, channel_tile, combine, last_row, load_rows, step_size


@triton.jit
def _state_in(A_ptr, init_ptr, segst_ptr, segdt_ptr, b, seg, nseg, dim, dstate, ds, dmask, soffs, smask):
    """(A log2 e, the state entering segment `seg`), both (channels, dstate) float32: the initial state composed
    with the end states of the segments before (each run from zero) and their decays exp(A sum dt')."""
    A2 = tl.load(A_ptr + soffs, mask=smask, other=0.0).to(tl.float32) * LOG2E
    if init_ptr is not None:
        h = tl.load(init_ptr + b * dim * dstate + soffs, mask=smask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros(A2.shape, dtype=tl.float32)
    if segst_ptr is not None:
        for s in range(0, seg):
            dsum = tl.load(segdt_ptr + (b * nseg + s) * dim + ds, mask=dmask, other=0.0)
            hs = tl.load(segst_ptr + (b * nseg + s) * dim * dstate + soffs, mask=smask, other=0.0)
            h = tl.exp2(dsum[:, None] * A2) * h + hs
    return A2, h


# Length arguments are not specialized: Triton would compile a variant of every config for each class of a
# length (== 1, divisible by 16, other), a stall of seconds at a server's first prompt of each class.
@triton.jit(do_not_specialize=("seqlen", "nblk", "seg_len", "nseg", "unit"))
def _segment_state_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, segst_ptr, segdt_ptr,
                          seqlen, dim, dstate: tl.constexpr, ngroups, dpg, nblk, seg_len, nseg, unit,
                          sx_b, sx_l, sdt_b, sdt_l, sB_b, sB_l, sB_g,
                          SOFTPLUS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_N: tl.constexpr, PTX: tl.constexpr, PREFETCH: tl.constexpr = 0):
    """Grid (channel tiles, nseg - 1): segment `seg` walked from a zero state; writes its end state to segst
    (batch, nseg, dim, dstate) and its sum of dt' to segdt (batch, nseg, dim), float32. PREFETCH: as the
    forward's."""
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    b, g, ds, dmask, ns, nmask, smask = channel_tile(pid, nblk, ngroups, dpg, dstate, BLOCK_D, BLOCK_N)
    ds = ds * unit  # unit: see the forward kernel
    ns = ns * unit
    soffs = ds[:, None] * dstate + ns[None, :]
    A2 = tl.trans(tl.load(A_ptr + soffs, mask=smask, other=0.0).to(tl.float32) * LOG2E)
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if bias_ptr is not None:
        bias = tl.load(bias_ptr + ds, mask=dmask, other=0.0).to(tl.float32)
    h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dsum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dc, nc = row_indices(ds, dmask, g, dpg, dstate, BLOCK_N)
    xb = x_ptr + b * sx_b
    dtb = dt_ptr + b * sdt_b
    Bb = B_ptr + b * sB_b + g * sB_g
    # every segment this pass walks ends before the sequence does (the last one is not walked here), on a tile
    # boundary (segments are whole checkpoint intervals): all its tiles are full
    c_first = seg * (seg_len // BLOCK_T)
    c_last = c_first + seg_len // BLOCK_T - 1
    if PREFETCH:
        nxt = tile_inputs(tile_pointers(xb, dtb, None, Bb, None, c_first, sx_l, sdt_l, 0, sB_l, 0, BLOCK_T),
                           BLOCK_T, dc, nc, sx_l, sdt_l, 0, sB_l, 0, PREFETCH, BLOCK_T, False)
        c_stop = c_last  # the last tile is walked after the loop, with nothing to load ahead
    else:
        c_stop = c_last + 1
    for c in range(c_first, c_stop):
        if PREFETCH:  # tile c + 1's loads issue before tile c is walked
            rows = nxt
            nxt = tile_inputs(tile_pointers(xb, dtb, None, Bb, None, c + 1, sx_l, sdt_l, 0, sB_l, 0, BLOCK_T),
                               BLOCK_T, dc, nc, sx_l, sdt_l, 0, sB_l, 0, PREFETCH, BLOCK_T, False)
        else:
            rows = None
        tile = tile_pointers(xb, dtb, None, Bb, None, c, sx_l, sdt_l, 0, sB_l, 0, BLOCK_T)
        h, dsum = segment_tile(tile, rows, h, dsum, A2, bias, dc, nc, sx_l, sdt_l, sB_l, SOFTPLUS, BLOCK_T, PTX)
    if PREFETCH:
        tile = tile_pointers(xb, dtb, None, Bb, None, c_last, sx_l, sdt_l, 0, sB_l, 0, BLOCK_T)
        h, dsum = segment_tile(tile, nxt, h, dsum, A2, bias, dc, nc, sx_l, sdt_l, sB_l, SOFTPLUS, BLOCK_T, PTX)
    tl.store(segst_ptr + (b * nseg + seg) * dim * dstate + soffs, tl.trans(h), mask=smask)
    tl.store(segdt_ptr + (b * nseg + seg) * dim + ds, dsum, mask=dmask)


@triton.jit(do_not_specialize=("seqlen", "nblk", "ck_tiles", "nck", "seg_len", "nseg", "unit"))
def _scan_fwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, segst_ptr, segdt_ptr,
                     y_ptr, final_ptr, ckpt_ptr, seqlen, dim, dstate: tl.constexpr, ngroups, dpg, nblk, ck_tiles,
                     nck, seg_len, nseg, unit, sx_b, sx_l, sdt_b, sdt_l, sz_b, sz_l, sB_b, sB_l, sB_g, sC_b, sC_l, sC_g,
                     SOFTPLUS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                     LOOP: tl.constexpr = False, PTX: tl.constexpr = False, PREFETCH: tl.constexpr = 0):
    """Grid (channel tiles, nseg). x, dt, z (batch, seqlen, dim), B, C (batch, seqlen, ngroups, dstate): unit
    last stride; y (batch, seqlen, dim) contiguous; A (dim, dstate), init and final (batch, dim, dstate), ckpt
    (batch, nck, dim, dstate), segst, segdt (from _segment_state_kernel) contiguous, float32 states. dstate is
    a compile-time constant (a model's never changes), which folds the LOOP's state-index clamp away.
    PREFETCH (LOOP only): the loads of each full tile's rows issue one tile ahead, before the tile before it is
    walked, and travel to the next iteration in registers (software pipelining)."""
    pid = tl.program_id(0)
    seg = tl.program_id(1)
    b, g, ds, dmask, ns, nmask, smask = channel_tile(pid, nblk, ngroups, dpg, dstate, BLOCK_D, BLOCK_N)
    if LOOP:
        # unit == 1 at run time, hidden from the compiler: with dstate's stride unknown it spreads the state by
        # channel, each thread holding whole states (v3); with the channels' contiguity unknown every
        # per-channel load and store keeps the state's layout (a vectorized one would cost shuffles each row)
        ds = ds * unit
        ns = ns * unit
    soffs = ds[:, None] * dstate + ns[None, :]
    A2, h = _state_in(A_ptr, init_ptr, segst_ptr, segdt_ptr, b, seg, nseg, dim, dstate, ds, dmask, soffs, smask)
    if LOOP:  # the state as (dstate, channels)
        A2 = tl.trans(A2)
        h = tl.trans(h)
    bias, Dv = channel_params(bias_ptr, D_ptr, ds, dmask, BLOCK_D)
    end = tl.minimum(seqlen, (seg + 1) * seg_len)
    c_first = seg * (seg_len // BLOCK_T)
    if LOOP:
        dc, nc = row_indices(ds, dmask, g, dpg, dstate, BLOCK_N)
        xb = x_ptr + b * sx_b  # each input at this program's batch row (and group)
        dtb = dt_ptr + b * sdt_b
        zb = z_ptr
        if z_ptr is not None:
            zb = z_ptr + b * sz_b
        Bb = B_ptr + b * sB_b + g * sB_g
        Cb = C_ptr + b * sC_b + g * sC_g
        yb = y_ptr + b * seqlen * dim
        c_full = end // BLOCK_T  # tiles whose rows are all before the end: no bounds work in their rows
        next_ck = c_first  # segments start on checkpoint tiles
        if PREFETCH:  # the first tile's loads, rows clamped in bounds: it may be the partial one (then not used)
            nxt = tile_inputs(tile_pointers(xb, dtb, zb, Bb, Cb, c_first, sx_l, sdt_l, sz_l, sB_l, sC_l, BLOCK_T),
                               end - c_first * BLOCK_T, dc, nc, sx_l, sdt_l, sz_l, sB_l, sC_l, PREFETCH, BLOCK_T, True)
            c_stop = c_full - 1  # the last full tile is walked after the loop, with nothing to load ahead
        else:
            c_stop = c_full
        for c in range(c_first, c_stop):
            if PREFETCH:  # tile c + 1's loads issue before tile c is walked
                rows = nxt
                ahead = tile_pointers(xb, dtb, zb, Bb, Cb, c + 1, sx_l, sdt_l, sz_l, sB_l, sC_l, BLOCK_T)
                nxt = tile_inputs(ahead, BLOCK_T, dc, nc, sx_l, sdt_l, sz_l, sB_l, sC_l, PREFETCH, BLOCK_T, False)
            else:
                rows = None
            h, next_ck = _loop_walk(xb, dtb, zb, Bb, Cb, yb, ckpt_ptr, rows, h, A2, bias, Dv, c, next_ck, ck_tiles, b,
                                    nck, dim, dstate, soffs, smask, BLOCK_T, ds, dmask, dc, nc, nmask, sx_l, sdt_l,
                                    sz_l, sB_l, sC_l, SOFTPLUS, BLOCK_T, BLOCK_D, False, PTX)
        if PREFETCH:
            if c_stop >= c_first:
                h, next_ck = _loop_walk(xb, dtb, zb, Bb, Cb, yb, ckpt_ptr, nxt, h, A2, bias, Dv, c_stop, next_ck,
                                        ck_tiles, b, nck, dim, dstate, soffs, smask, BLOCK_T, ds, dmask, dc, nc,
                                        nmask, sx_l, sdt_l, sz_l, sB_l, sC_l, SOFTPLUS, BLOCK_T, BLOCK_D, False, PTX)
        if c_full * BLOCK_T < end:  # the last tile is partial: walked with bounds, loaded where walked
            h, _ = _loop_walk(xb, dtb, zb, Bb, Cb, yb, ckpt_ptr, None, h, A2, bias, Dv, c_full, next_ck, ck_tiles, b,
                              nck, dim, dstate, soffs, smask, end - c_full * BLOCK_T, ds, dmask, dc, nc, nmask, sx_l,
                              sdt_l, sz_l, sB_l, sC_l, SOFTPLUS, BLOCK_T, BLOCK_D, True, PTX)
        h_out = tl.trans(h)
    else:
        tloc = tl.arange(0, BLOCK_T)
        next_ck = c_first
        for c in range(c_first, tl.cdiv(end, BLOCK_T)):
            next_ck = _save_checkpoint(ckpt_ptr, h, c, next_ck, ck_tiles, b, nck, dim, dstate, soffs, smask, LOOP)
            rows = c * BLOCK_T + tloc
            rmask = rows < end
            dtv, _ = step_size(dt_ptr, b * sdt_b, rows, rmask, sdt_l, ds, dmask, bias, SOFTPLUS)
            x = load_rows(x_ptr, b * sx_b, rows, rmask, sx_l, ds, dmask)
            Bt = load_rows(B_ptr, b * sB_b + g * sB_g, rows, rmask, sB_l, ns, nmask)
            Ct = load_rows(C_ptr, b * sC_b + g * sC_g, rows, rmask, sC_l, ns, nmask)
            a = tl.exp2(dtv[:, :, None] * A2[None, :, :])  # ZOH for A
            u = (dtv * x)[:, :, None] * Bt[:, None, :]  # Euler for B
            pa, pu = tl.associative_scan((a, u), 0, combine)
            hs = pa * h[None, :, :] + pu  # (BLOCK_T, BLOCK_D, BLOCK_N)
            Y = tl.sum(hs * Ct[:, None, :], 2) + Dv[None, :] * x
            h = last_row(hs, tloc, BLOCK_T - 1)  # masked rows neither decay nor add: the last row is the state
            if z_ptr is not None:
                zt = load_rows(z_ptr, b * sz_b, rows, rmask, sz_l, ds, dmask)
                Y *= zt * tl.sigmoid(zt)
            offs = (b * seqlen + rows)[:, None] * dim + ds[None, :]
            tl.store(y_ptr + offs, Y.to(y_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])
        h_out = h
    if seg == nseg - 1:
        tl.store(final_ptr + b * dim * dstate + soffs, h_out, mask=smask)


@triton.jit
def _save_checkpoint(ckpt_ptr, h, c, next_ck, ck_tiles, b, nck, dim, dstate, soffs, smask, LOOP: tl.constexpr):
    """Stores the state entering tile c when c is the next checkpoint tile `next_ck` (LOOP: h is (dstate,
    channels)); returns the next one after c. A counter, not c % ck_tiles: the remainder by a run-time divisor
    cost ~20 instructions a tile."""
    if ckpt_ptr is not None:
        if c == next_ck:
            tl.store(ckpt_ptr + (b * nck + c // ck_tiles) * dim * dstate + soffs, tl.trans(h) if LOOP else h,
                     mask=smask)
            next_ck += ck_tiles
    return next_ck


@triton.jit
def _loop_walk(xb, dtb, zb, Bb, Cb, yb, ckpt_ptr, rows, h, A2, bias, Dv, c, next_ck, ck_tiles, b, nck, dim, dstate,
               soffs, smask, nrows, ds, dmask, dc, nc, nmask, sx_l, sdt_l, sz_l, sB_l, sC_l, SOFTPLUS: tl.constexpr,
               BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BOUNDED: tl.constexpr, PTX: tl.constexpr):
    """Tile c of the LOOP walk, from pointers at the program's batch row: its checkpoint if it starts one, then
    loop_tile. Returns (the state after the tile, the next checkpoint tile)."""
    next_ck = _save_checkpoint(ckpt_ptr, h, c, next_ck, ck_tiles, b, nck, dim, dstate, soffs, smask, True)
    tile = tile_pointers(xb, dtb, zb, Bb, Cb, c, sx_l, sdt_l, sz_l, sB_l, sC_l, BLOCK_T)
    h = loop_tile(tile, rows, yb + tl.cast(c, tl.int64) * BLOCK_T * dim, h, A2, bias, Dv, nrows, ds, dmask, dc, nc,
                   nmask, dim, sx_l, sdt_l, sz_l, sB_l, sC_l, SOFTPLUS, BLOCK_T, BLOCK_D, BOUNDED, PTX)
    return h, next_ck


def strides(t, ndim_lead: int):
    """The leading strides of t (None -> zeros), for the kernels' stride arguments."""
    return (0,) * ndim_lead if t is None else tuple(t.stride()[:ndim_lead])


def selective_scan_fwd(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
                       checkpoint: bool = False, *, config=None, checkpoint_rows=CHECKPOINT_ROWS, segment_rows=None):
    """Fused forward. x, dt, z (batch, seqlen, dim) and B, C (batch, seqlen, ngroups, dstate) with unit last
    stride; A (dim, dstate), D, dt_bias (dim,), initial_state (batch, dim, dstate) contiguous.
    `config` forces one block config; `checkpoint_rows` (a multiple of BLOCK_T) sets how often states are saved;
    `segment_rows` (a multiple of checkpoint_rows) forces the segment length (default: plan.segment_length).
    Returns (y (batch, seqlen, dim) in x.dtype, final_state (batch, dim, dstate) float32,
    ckpt (batch, cdiv(seqlen, checkpoint_rows), dim, dstate) float32: the state entering each interval, or None).
    """
    batch, seqlen, dim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    dpg = dim // ngroups
    y = torch.empty(batch, seqlen, dim, device=x.device, dtype=x.dtype)
    final = torch.empty(batch, dim, dstate, device=x.device, dtype=torch.float32)
    nck = triton.cdiv(seqlen, checkpoint_rows)
    ckpt = torch.empty(batch, nck, dim, dstate, device=x.device, dtype=torch.float32) if checkpoint else None
    scalars = (seqlen, dim, dstate, ngroups, dpg)
    strides_xdt = (*strides(x, 2), *strides(dt, 2))
    stride_args = (*strides_xdt, *strides(z, 2), *strides(B, 3), *strides(C, 3))
    if segment_rows is not None and (segment_rows <= 0 or segment_rows % checkpoint_rows):
        raise ValueError(f"segment_rows must be a positive multiple of checkpoint_rows={checkpoint_rows}, "
                         f"got {segment_rows}")

    def run(cfg):
        bt, bd, warps = cfg["BLOCK_T"], cfg["BLOCK_D"], cfg["num_warps"]
        assert checkpoint_rows % bt == 0, (checkpoint_rows, bt)  # tiles must not straddle a checkpoint
        nblk = triton.cdiv(dpg, bd)
        tiles = batch * ngroups * nblk
        prefetch = cfg.get("PREFETCH", False)
        seg_len = segment_rows or segment_length(seqlen, tiles * warps, multiprocessors(x.device),
                                                 checkpoint_rows)
        nseg = triton.cdiv(seqlen, seg_len)
        consts = dict(SOFTPLUS=bool(dt_softplus), BLOCK_T=bt, BLOCK_D=bd, BLOCK_N=block_n(dstate),
                      **launch_options(cfg, x.device))
        segst = segdt = None
        if nseg > 1:
            segst = torch.empty(batch, nseg, dim, dstate, device=x.device, dtype=torch.float32)
            segdt = torch.empty(batch, nseg, dim, device=x.device, dtype=torch.float32)
            _segment_state_kernel[(tiles, nseg - 1)](
                x, dt, A, B, dt_bias, segst, segdt, *scalars, nblk, seg_len, nseg, 1, *strides_xdt,
                *strides(B, 3), PREFETCH=prefetch, **consts)
        _scan_fwd_kernel[(tiles, nseg)](
            x, dt, A, B, C, D, z, dt_bias, initial_state, segst, segdt, y, final, ckpt, *scalars, nblk,
            checkpoint_rows // bt, nck, seg_len, nseg, 1, *stride_args, LOOP=cfg.get("LOOP", False), PREFETCH=prefetch,
            **consts)

    if batch == 0:
        return y, final, ckpt
    if config is None:
        key = (x.dtype, triton.next_power_of_2(batch), triton.next_power_of_2(seqlen), dim, dstate, ngroups,
               D is not None, z is not None, checkpoint)
        config = pick("selective_scan_fwd", key, configs("fwd", dstate, dpg, loop=True), run, x.device,
                      work=x.numel())
    run(config)
    return y, final, ckpt
