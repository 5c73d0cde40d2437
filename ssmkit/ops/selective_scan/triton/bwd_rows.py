"""Selective scan backward that walks rows with a thread per channel (the layout of the forward's LOOP variant).

With G_t = dL/dh_t: G_t = a_{t+1} G_{t+1} + dy_t C_t (G after the last row = d final_state), and
dx_t = D dy_t + dt'_t (G_t . B_t), d dt'_t = sum_n G_t h_{t-1} a_t A + x_t (G_t . B_t),
dA = sum_t G_t h_{t-1} a_t dt'_t, dB_t = sum_d G_t dt'_t x_t, dC_t = sum_d dy_t h_t, d h0 = a_0 G_0.

Version history
- v1: bwd.py's tile backward keeps a (rows, channels, dstate) tile and runs two associative scans a tile, which
  spread dstate over the threads of a warp (shuffles and shared memory every row, as the forward's v2 did).
  Here each thread holds whole channels: per checkpoint interval, a forward walk stores each tile's entering
  state to a per-program scratch; then, tiles last first, the tile's states are recomputed into a register
  tile and the rows walked backwards with the adjoint carry a_t G_t. Per-channel gradients collect in
  (rows, channels) register tiles stored once per tile (a store between rows would hold back the next row's
  loads); dB and dC are summed over the program's channels (a reduction across the warp) and written as
  per-program partials, summed on the host like bwd.py's.
- v2: dt' recomputed by tiles.softplus_fast (through row_inputs), as the forward's rows compute it (fwd.py v4),
  so the states walked here are the ones the forward walked.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ssmkit.ops.ssd.triton.tiles import exp2_ftz

from .tiles import LN2, LOG2E, channel_params, channel_tile, row_inputs


@triton.jit
def _pick_row(T, rows_local, i: tl.constexpr):
    """Row i of a (BLOCK_T, ...) register tile (the rows sit in each thread's registers: a select, no traffic)."""
    return tl.sum(tl.where(rows_local[:, None, None] == i, T, 0.0), 0)


@triton.jit(do_not_specialize=("seqlen", "nblk", "ck_tiles", "nck", "unit"))
def _scan_bwd_rows_kernel(dout_ptr, dfinal_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr,
                          scratch_ptr, dx_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
                          seqlen, dim, dstate: tl.constexpr, ngroups, dpg, nblk, ck_tiles, nck, unit,
                          sx_b, sx_l, sdt_b, sdt_l, sz_b, sz_l, sB_b, sB_l, sB_g, sC_b, sC_l, sC_g,
                          SOFTPLUS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_N: tl.constexpr, PTX: tl.constexpr):
    """As bwd.py's _scan_bwd_kernel; scratch (programs, ck_tiles, BLOCK_N, BLOCK_D) float32. `unit` == 1 at run
    time (see the forward kernel: it makes the compiler spread the state by channel)."""
    pid = tl.program_id(0)
    b, g, ds, dmask, ns, nmask, smask = channel_tile(pid, nblk, ngroups, dpg, dstate, BLOCK_D, BLOCK_N)
    blk = pid % nblk
    soffs = ds[:, None] * dstate + (ns * unit)[None, :]  # (channels, dstate), transposed on load
    A2 = tl.trans(tl.load(A_ptr + soffs, mask=smask, other=0.0).to(tl.float32)) * LOG2E
    bias, Dv = channel_params(bias_ptr, D_ptr, ds, dmask, BLOCK_D)
    carry = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)  # a_{t+1} G_{t+1}: what enters G_t from later rows
    if dfinal_ptr is not None:
        carry = tl.trans(tl.load(dfinal_ptr + b * dim * dstate + soffs, mask=smask, other=0.0))
    dA = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dc = tl.where(dmask, ds, g * dpg)  # clamped in bounds for row_inputs' unmasked loads
    nc = tl.minimum(ns, dstate - 1)
    tloc = tl.arange(0, BLOCK_T)
    scratch = scratch_ptr + pid.to(tl.int64) * ck_tiles * BLOCK_N * BLOCK_D + \
        (ns * unit)[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    ntiles = tl.cdiv(seqlen, BLOCK_T)
    nparts = ngroups * nblk
    for r in range(0, nck):
        iv = nck - 1 - r
        c0 = iv * ck_tiles
        n_in = tl.minimum(ck_tiles, ntiles - c0)
        # 1. the state entering each tile of the interval, from the interval's checkpoint
        h = tl.trans(tl.load(ckpt_ptr + (b * nck + iv) * dim * dstate + soffs, mask=smask, other=0.0))
        for j in range(0, n_in):
            tl.store(scratch + j * BLOCK_N * BLOCK_D, h)
            if j < n_in - 1:
                for i in tl.static_range(BLOCK_T):
                    row = tl.cast((c0 + j) * BLOCK_T + i, tl.int64)
                    dtv, u, _, Bt, _ = row_inputs(x_ptr, dt_ptr, B_ptr, bias, b, g, row, seqlen, dc, nc,
                                                  sx_b, sx_l, sdt_b, sdt_l, sB_b, sB_l, sB_g, SOFTPLUS, PTX=PTX)
                    h = exp2_ftz(dtv[None, :] * A2, PTX) * h + Bt[:, None] * u[None, :]
        tl.debug_barrier()
        # 2. the tiles of the interval, last first
        for r2 in range(0, n_in):
            t0 = (c0 + n_in - 1 - r2) * BLOCK_T
            h_in = tl.load(scratch + (n_in - 1 - r2) * BLOCK_N * BLOCK_D)
            # the tile's states h_t, recomputed into registers
            H = tl.zeros((BLOCK_T, BLOCK_N, BLOCK_D), dtype=tl.float32)
            h = h_in
            for i in tl.static_range(BLOCK_T):
                row = tl.cast(t0 + i, tl.int64)
                dtv, u, _, Bt, _ = row_inputs(x_ptr, dt_ptr, B_ptr, bias, b, g, row, seqlen, dc, nc,
                                              sx_b, sx_l, sdt_b, sdt_l, sB_b, sB_l, sB_g, SOFTPLUS, PTX=PTX)
                h = exp2_ftz(dtv[None, :] * A2, PTX) * h + Bt[:, None] * u[None, :]
                H = tl.where(tloc[:, None, None] == i, h[None, :, :], H)
            DX = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
            DDT = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
            DZ = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
            DB = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
            DC = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
            # 3. its rows, last first
            for ir in tl.static_range(BLOCK_T - 1, -1, -1):
                row = tl.cast(t0 + ir, tl.int64)
                valid = row < seqlen
                rc = tl.minimum(row, seqlen - 1)
                dtv, u, x, Bt, raw = row_inputs(x_ptr, dt_ptr, B_ptr, bias, b, g, row, seqlen, dc, nc,
                                                sx_b, sx_l, sdt_b, sdt_l, sB_b, sB_l, sB_g, SOFTPLUS, PTX=PTX)
                u = tl.where(dmask, u, 0.0)  # a padding channel must not reach the dB sum
                a = exp2_ftz(dtv[None, :] * A2, PTX)
                h_t = _pick_row(H, tloc, ir)
                if ir == 0:
                    h_prev = h_in
                else:
                    h_prev = _pick_row(H, tloc, ir - 1)
                Ct = tl.load(C_ptr + b * sC_b + g * sC_g + rc * sC_l + nc).to(tl.float32)
                Ct = tl.where(nmask, Ct, 0.0)
                dy = tl.load(dout_ptr + (b * seqlen + rc) * dim + dc).to(tl.float32)
                dy = tl.where(dmask & valid, dy, 0.0)  # zero dy keeps G = 0 in padding rows and channels
                if z_ptr is not None:
                    zt = tl.load(z_ptr + b * sz_b + rc * sz_l + dc).to(tl.float32)
                    sg = tl.sigmoid(zt)
                    y = tl.sum(h_t * Ct[:, None], 0) + Dv * x
                    DZ = tl.where(tloc[:, None] == ir, (dy * y * sg * (1.0 + zt * (1.0 - sg)))[None, :], DZ)
                    dy = dy * zt * sg
                G = carry + Ct[:, None] * dy[None, :]
                carry = a * G
                GB = tl.sum(G * Bt[:, None], 0)
                Gha = G * h_prev * a
                dA += Gha * dtv[None, :]  # d a_t / dA = a_t dt'_t
                ddt = tl.sum(Gha * A2, 0) * LN2 + x * GB  # A2 ln 2 = A
                if SOFTPLUS:
                    ddt = ddt * tl.sigmoid(raw)
                ddt = tl.where(valid, ddt, 0.0)
                dbias += ddt
                dD += dy * x
                DX = tl.where(tloc[:, None] == ir, (dy * Dv + dtv * GB)[None, :], DX)
                DDT = tl.where(tloc[:, None] == ir, ddt[None, :], DDT)
                DB = tl.where(tloc[:, None] == ir, tl.sum(G * u[None, :], 1)[None, :], DB)
                DC = tl.where(tloc[:, None] == ir, tl.sum(h_t * dy[None, :], 1)[None, :], DC)
            rows = t0 + tloc
            offs = (b * seqlen + rows)[:, None] * dim + ds[None, :]
            omask = (rows < seqlen)[:, None] & dmask[None, :]
            tl.store(dx_ptr + offs, DX.to(dx_ptr.dtype.element_ty), mask=omask)
            tl.store(ddt_ptr + offs, DDT.to(ddt_ptr.dtype.element_ty), mask=omask)
            if z_ptr is not None:
                tl.store(dz_ptr + offs, DZ.to(dz_ptr.dtype.element_ty), mask=omask)
            poffs = ((b * seqlen + rows) * nparts + g * nblk + blk)[:, None] * dstate + ns[None, :]
            pmask = (rows < seqlen)[:, None] & nmask[None, :]
            tl.store(dB_ptr + poffs, DB, mask=pmask)
            tl.store(dC_ptr + poffs, DC, mask=pmask)
        tl.debug_barrier()
    vecoffs = b * dim + ds
    tl.store(dA_ptr + b * dim * dstate + soffs, tl.trans(dA), mask=smask)
    tl.store(dD_ptr + vecoffs, dD, mask=dmask)
    tl.store(dbias_ptr + vecoffs, dbias, mask=dmask)
    if dh0_ptr is not None:
        tl.store(dh0_ptr + b * dim * dstate + soffs, tl.trans(carry), mask=smask)
