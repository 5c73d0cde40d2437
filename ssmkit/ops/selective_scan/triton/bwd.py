"""Fused selective scan backward in Triton: states recomputed from the forward's checkpoints, the adjoint state
carried backwards through the sequence by a reverse scan, every input gradient in one pass.

With G_t = dL/dh_t: G_t = a_{t+1} G_{t+1} + dy_t C_t (G after the last row = d final_state), and
dx_t = D dy_t + dt'_t (G_t . B_t), d dt'_t = sum_n G_t h_{t-1} a_t A + x_t (G_t . B_t),
dA = sum_t G_t h_{t-1} a_t dt'_t, dB_t = sum_d G_t dt'_t x_t, dC_t = sum_d dy_t h_t, d h0 = a_0 G_0.

Version history
- v1: one program per (batch row, group, block of channels) walks the checkpoint intervals from the last; in
  each it re-runs the forward over the interval's tiles to get their entering states (kept in a small
  per-program scratch that stays in L2), then walks the tiles backwards: h_{t-1} by a scan over the rows
  shifted by one, G by tl.associative_scan(reverse=True) with the carried G entering at the last row.
  B and C gradients are per-program partial sums over channels (summed on the host, no atomics).
- v2: selective_scan_bwd also launches bwd_rows.py's kernel (a thread per channel) for the configs marked LOOP;
  the tuner times both kinds (on an H100 at b16 L1K d2048: 3.0 ms rows vs 10.9 ms tile).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmkit.ops.ssd.triton.plan import pick

from .bwd_rows import _scan_bwd_rows_kernel
from .plan import BWD_ROWS_AUTO, CHECKPOINT_ROWS, block_n, configs, launch_options
from .tiles import channel_params, channel_tile, combine, last_row, load_rows, step_size


@triton.jit
def _tile_states_in(x_ptr, dt_ptr, A, B_ptr, h, bias, b, g, rows, rmask, ds, dmask, ns, nmask,
                    sx_b, sx_l, sdt_b, sdt_l, sB_b, sB_l, sB_g, SOFTPLUS: tl.constexpr):
    """The state after the tile `rows`, from the state h before it (the forward's recurrence, as a reduction)."""
    dtv, _ = step_size(dt_ptr, b * sdt_b, rows, rmask, sdt_l, ds, dmask, bias, SOFTPLUS)
    x = load_rows(x_ptr, b * sx_b, rows, rmask, sx_l, ds, dmask)
    Bt = load_rows(B_ptr, b * sB_b + g * sB_g, rows, rmask, sB_l, ns, nmask)
    pa, pu = tl.reduce((tl.exp(dtv[:, :, None] * A[None, :, :]), (dtv * x)[:, :, None] * Bt[:, None, :]), 0, combine)
    return pa * h + pu


# Length arguments are not specialized: Triton would compile a variant of every config for each class of a
# length (== 1, divisible by 16, other), a stall of seconds at a server's first prompt of each class.
@triton.jit(do_not_specialize=("seqlen", "nblk", "ck_tiles", "nck"))
def _scan_bwd_kernel(dout_ptr, dfinal_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr,
                     scratch_ptr, dx_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
                     seqlen, dim, dstate, ngroups, dpg, nblk, ck_tiles, nck,
                     sx_b, sx_l, sdt_b, sdt_l, sz_b, sz_l, sB_b, sB_l, sB_g, sC_b, sC_l, sC_g,
                     SOFTPLUS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """dout, dx, ddt, dz (batch, seqlen, dim) contiguous; dA (batch, dim, dstate), dD, dbias (batch, dim),
    dB, dC (batch, seqlen, ngroups * nblk, dstate): float32 partials; scratch (programs, ck_tiles, BLOCK_D,
    BLOCK_N) float32; other arguments as in the forward kernel."""
    pid = tl.program_id(0)
    b, g, ds, dmask, ns, nmask, smask = channel_tile(pid, nblk, ngroups, dpg, dstate, BLOCK_D, BLOCK_N)
    blk = pid % nblk  # this program's slot in the per-block dB, dC partials
    soffs = ds[:, None] * dstate + ns[None, :]
    A = tl.load(A_ptr + soffs, mask=smask, other=0.0).to(tl.float32)
    bias, Dv = channel_params(bias_ptr, D_ptr, ds, dmask, BLOCK_D)
    carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # dL/dh of the row before the current tile's first
    if dfinal_ptr is not None:
        carry = tl.load(dfinal_ptr + b * dim * dstate + soffs, mask=smask, other=0.0)
    dA = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    tloc = tl.arange(0, BLOCK_T)
    scratch = scratch_ptr + pid.to(tl.int64) * ck_tiles * BLOCK_D * BLOCK_N + tl.arange(0, BLOCK_D)[:, None] * \
        BLOCK_N + ns[None, :]
    ntiles = tl.cdiv(seqlen, BLOCK_T)
    ldout = b * seqlen * dim
    for r in range(0, nck):
        iv = nck - 1 - r
        c0 = iv * ck_tiles
        n_in = tl.minimum(ck_tiles, ntiles - c0)
        # 1. the state entering each tile of the interval, from the interval's checkpoint
        h = tl.load(ckpt_ptr + (b * nck + iv) * dim * dstate + soffs, mask=smask, other=0.0)
        for j in range(0, n_in):
            tl.store(scratch + j * BLOCK_D * BLOCK_N, h)
            if j < n_in - 1:
                rows = (c0 + j) * BLOCK_T + tloc
                h = _tile_states_in(x_ptr, dt_ptr, A, B_ptr, h, bias, b, g, rows, rows < seqlen, ds, dmask, ns,
                                    nmask, sx_b, sx_l, sdt_b, sdt_l, sB_b, sB_l, sB_g, SOFTPLUS)
        tl.debug_barrier()
        # 2. the tiles of the interval, last first
        for r2 in range(0, n_in):
            j = n_in - 1 - r2
            t0 = (c0 + j) * BLOCK_T
            rows = t0 + tloc
            rmask = rows < seqlen
            h_in = tl.load(scratch + j * BLOCK_D * BLOCK_N)
            dtv, raw = step_size(dt_ptr, b * sdt_b, rows, rmask, sdt_l, ds, dmask, bias, SOFTPLUS)
            x = load_rows(x_ptr, b * sx_b, rows, rmask, sx_l, ds, dmask)
            Bt = load_rows(B_ptr, b * sB_b + g * sB_g, rows, rmask, sB_l, ns, nmask)
            Ct = load_rows(C_ptr, b * sC_b + g * sC_g, rows, rmask, sC_l, ns, nmask)
            # h_{t-1}: the scan over rows shifted by one, identity at the tile's first row
            pmask = (rows - 1 >= t0) & rmask
            dtp, _ = step_size(dt_ptr, b * sdt_b, rows - 1, pmask, sdt_l, ds, dmask, bias, SOFTPLUS)
            xp = load_rows(x_ptr, b * sx_b, rows - 1, pmask, sx_l, ds, dmask)
            Bp = load_rows(B_ptr, b * sB_b + g * sB_g, rows - 1, pmask, sB_l, ns, nmask)
            qa, qu = tl.associative_scan((tl.exp(dtp[:, :, None] * A[None, :, :]),
                                          (dtp * xp)[:, :, None] * Bp[:, None, :]), 0, combine)
            hprev = qa * h_in[None, :, :] + qu
            a = tl.exp(dtv[:, :, None] * A[None, :, :])
            hs = a * hprev + (dtv * x)[:, :, None] * Bt[:, None, :]
            offs = ldout + rows[:, None] * dim + ds[None, :]
            omask = rmask[:, None] & dmask[None, :]
            dy = tl.load(dout_ptr + offs, mask=omask, other=0.0).to(tl.float32)
            if z_ptr is not None:
                zt = load_rows(z_ptr, b * sz_b, rows, rmask, sz_l, ds, dmask)
                sg = tl.sigmoid(zt)
                y = tl.sum(hs * Ct[:, None, :], 2) + Dv[None, :] * x
                tl.store(dz_ptr + offs, (dy * y * sg * (1.0 + zt * (1.0 - sg))).to(dz_ptr.dtype.element_ty),
                         mask=omask)
                dy = dy * zt * sg
            dD += tl.sum(dy * x, 0)
            # G_t = a_{t+1} G_{t+1} + dy_t C_t inside the tile; the carry enters at the last row
            nxt = (rows + 1 < t0 + BLOCK_T) & (rows + 1 < seqlen)
            dtn, _ = step_size(dt_ptr, b * sdt_b, rows + 1, nxt, sdt_l, ds, dmask, bias, SOFTPLUS)
            cc = dy[:, :, None] * Ct[:, None, :] + tl.where(tloc[:, None, None] == BLOCK_T - 1, carry[None, :, :], 0.0)
            _, G = tl.associative_scan((tl.exp(dtn[:, :, None] * A[None, :, :]), cc), 0, combine, reverse=True)
            carry = last_row(a * G, tloc, 0)
            GB = tl.sum(G * Bt[:, None, :], 2)
            Gha = G * hprev * a
            dA += tl.sum(Gha * dtv[:, :, None], 0)
            ddt = tl.sum(Gha * A[None, :, :], 2) + x * GB
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)
            ddt = tl.where(omask, ddt, 0.0)
            dbias += tl.sum(ddt, 0)
            tl.store(ddt_ptr + offs, ddt.to(ddt_ptr.dtype.element_ty), mask=omask)
            tl.store(dx_ptr + offs, (dy * Dv[None, :] + dtv * GB).to(dx_ptr.dtype.element_ty), mask=omask)
            poffs = ((b * seqlen + rows) * (ngroups * nblk) + g * nblk + blk)[:, None] * dstate + ns[None, :]
            pm = rmask[:, None] & nmask[None, :]
            tl.store(dB_ptr + poffs, tl.sum(G * (dtv * x)[:, :, None], 1), mask=pm)
            tl.store(dC_ptr + poffs, tl.sum(dy[:, :, None] * hs, 1), mask=pm)
        tl.debug_barrier()
    vecoffs = b * dim + ds
    tl.store(dA_ptr + b * dim * dstate + soffs, dA, mask=smask)
    tl.store(dD_ptr + vecoffs, dD, mask=dmask)
    tl.store(dbias_ptr + vecoffs, dbias, mask=dmask)
    if dh0_ptr is not None:
        tl.store(dh0_ptr + b * dim * dstate + soffs, carry, mask=smask)


def selective_scan_bwd(dout, dfinal, x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, ckpt, *,
                       config=None, checkpoint_rows=CHECKPOINT_ROWS):
    """Every input gradient. dout (batch, seqlen, dim) contiguous; dfinal (batch, dim, dstate) float32
    contiguous or None; ckpt from selective_scan_fwd(checkpoint=True) with the same checkpoint_rows; the rest
    as in selective_scan_fwd. Returns (dx, ddt, dA, dB, dC, dD, dz, dt_bias grad, d initial_state), each in
    its input's dtype (None where the input is None)."""
    from .fwd import strides

    batch, seqlen, dim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    dpg = dim // ngroups
    nck = ckpt.shape[1]
    dev, f32 = x.device, torch.float32
    dx = torch.empty(batch, seqlen, dim, device=dev, dtype=x.dtype)
    ddt = torch.empty(batch, seqlen, dim, device=dev, dtype=dt.dtype)
    dz = None if z is None else torch.empty(batch, seqlen, dim, device=dev, dtype=z.dtype)
    dA = torch.empty(batch, dim, dstate, device=dev, dtype=f32)
    dD, dbias = (torch.empty(batch, dim, device=dev, dtype=f32) for _ in range(2))
    dh0 = None if initial_state is None else torch.empty(batch, dim, dstate, device=dev, dtype=f32)
    stride_args = (*strides(x, 2), *strides(dt, 2), *strides(z, 2), *strides(B, 3), *strides(C, 3))
    partial = {}

    def run(cfg):
        bt, bd = cfg["BLOCK_T"], cfg["BLOCK_D"]
        assert checkpoint_rows % bt == 0, (checkpoint_rows, bt)  # tiles must not straddle a checkpoint
        nblk = triton.cdiv(dpg, bd)
        nprog = batch * ngroups * nblk
        ck_tiles = checkpoint_rows // bt
        bn = block_n(dstate)
        dBp, dCp = (torch.empty(batch, seqlen, ngroups * nblk, dstate, device=dev, dtype=f32) for _ in range(2))
        partial.update(dB=dBp, dC=dCp, nblk=nblk)
        outs = (dx, ddt, dz, dA, dBp, dCp, dD, dbias, dh0)
        ins = (dout, dfinal, x, dt, A, B, C, D, z, dt_bias, ckpt)
        consts = dict(SOFTPLUS=bool(dt_softplus), BLOCK_T=bt, BLOCK_D=bd, BLOCK_N=bn, num_warps=cfg["num_warps"])
        if cfg.get("LOOP"):  # bwd_rows.py: a thread per channel, scratch laid out (dstate, channels)
            scratch = torch.empty(nprog, ck_tiles, bn, bd, device=dev, dtype=f32)
            _scan_bwd_rows_kernel[(nprog,)](*ins, scratch, *outs, seqlen, dim, dstate, ngroups, dpg, nblk, ck_tiles,
                                            nck, 1, *stride_args, **dict(consts, **launch_options(cfg, dev)))
        else:
            scratch = torch.empty(nprog, ck_tiles, bd, bn, device=dev, dtype=f32)
            _scan_bwd_kernel[(nprog,)](*ins, scratch, *outs, seqlen, dim, dstate, ngroups, dpg, nblk, ck_tiles, nck,
                                       *stride_args, **consts)

    if config is None:
        key = (x.dtype, triton.next_power_of_2(batch), triton.next_power_of_2(seqlen), dim, dstate, ngroups,
               D is not None, z is not None)
        config = pick("selective_scan_bwd", key, configs("bwd", dstate, dpg, loop=BWD_ROWS_AUTO), run, dev,
                      work=x.numel())
    run(config)

    def per_group(p):  # (batch, seqlen, ngroups * nblk, dstate) -> (batch, seqlen, ngroups, dstate)
        return p.view(batch, seqlen, ngroups, partial["nblk"], dstate).sum(3)

    def cast(t, like):
        return None if like is None else t.to(like.dtype)

    return (dx, ddt, cast(dA.sum(0), A), cast(per_group(partial["dB"]), B), cast(per_group(partial["dC"]), C),
            cast(dD.sum(0), D), dz, cast(dbias.sum(0), dt_bias), cast(dh0, initial_state))
