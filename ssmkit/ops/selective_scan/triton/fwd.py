"""Fused selective scan forward in Triton (Gu & Dao 2023, section 3.3.2: the scan kept in fast memory).

One program per (batch row, group, block of channels) walks the sequence in tiles of BLOCK_T rows with its
(BLOCK_D, dstate) state in registers. Per tile: dt' = softplus(dt + bias), a = exp(dt' A) (ZOH), b = dt' B x
(Euler), the states of the tile by an associative scan over (a, b) started from the carried state, y = C . h,
then D x and the silu(z) gate. Only x, dt, B, C, z are read and y written; the states never reach memory,
except every CHECKPOINT_ROWS rows when the backward will need them.

Version history
- v1: tile-parallel scan (tl.associative_scan over the rows of a tile) instead of a token-by-token loop, so each
  step of the loop has BLOCK_T * BLOCK_D * dstate independent products in flight; the state leaving a tile is
  the tile's last row. Reads x, z, dt, B, C through their strides (the Mamba mixer's x and z are halves of one
  projection, B and C slices of another), so no copy precedes the kernel.
- v2: a LOOP variant (a config flag): inside each tile the rows are walked one by one, unrolled, each reading its
  row of x, dt, z, B, C straight from memory, so the state needs only (BLOCK_D, dstate) registers and no
  cross-thread scan; the unrolled row loads do not depend on the state and can be issued ahead. On an H100 the
  tile-parallel v1 reached 5% of the copy ceiling whatever its block sizes (compute-bound on the scan).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmkit.ops.ssd.triton.plan import pick
from ssmkit.ops.ssd.triton.tiles import softplus

from .plan import CHECKPOINT_ROWS, block_n, configs
from .tiles import channel_tile, combine, last_row, load_rows, step_size


# Length arguments are not specialized: Triton would compile a variant of every config for each class of a
# length (== 1, divisible by 16, other), a stall of seconds at a server's first prompt of each class.
@triton.jit(do_not_specialize=("seqlen", "nblk", "ck_tiles", "nck"))
def _scan_fwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, y_ptr, final_ptr,
                     ckpt_ptr, seqlen, dim, dstate, ngroups, dpg, nblk, ck_tiles, nck,
                     sx_b, sx_l, sdt_b, sdt_l, sz_b, sz_l, sB_b, sB_l, sB_g, sC_b, sC_l, sC_g,
                     SOFTPLUS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                     LOOP: tl.constexpr = False):
    """x, dt, z (batch, seqlen, dim), B, C (batch, seqlen, ngroups, dstate): unit last stride; y (batch, seqlen,
    dim) contiguous; A (dim, dstate), init and final (batch, dim, dstate), ckpt (batch, nck, dim, dstate)
    contiguous, float32 states."""
    pid = tl.program_id(0)
    b, g, ds, dmask, ns, nmask, smask = channel_tile(pid, nblk, ngroups, dpg, dstate, BLOCK_D, BLOCK_N)
    soffs = ds[:, None] * dstate + ns[None, :]
    A = tl.load(A_ptr + soffs, mask=smask, other=0.0).to(tl.float32)
    if init_ptr is not None:
        h = tl.load(init_ptr + b * dim * dstate + soffs, mask=smask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if bias_ptr is not None:
        bias = tl.load(bias_ptr + ds, mask=dmask, other=0.0).to(tl.float32)
    if D_ptr is not None:
        Dv = tl.load(D_ptr + ds, mask=dmask, other=0.0).to(tl.float32)
    tloc = tl.arange(0, BLOCK_T)
    for c in range(0, tl.cdiv(seqlen, BLOCK_T)):
        if ckpt_ptr is not None:
            if c % ck_tiles == 0:
                tl.store(ckpt_ptr + (b * nck + c // ck_tiles) * dim * dstate + soffs, h, mask=smask)
        if LOOP:
            for i in tl.static_range(BLOCK_T):
                row = tl.cast(c * BLOCK_T + i, tl.int64)
                m = dmask & (row < seqlen)
                raw = tl.load(dt_ptr + b * sdt_b + row * sdt_l + ds, mask=m, other=0.0).to(tl.float32) + bias
                dtv = raw
                if SOFTPLUS:
                    dtv = softplus(raw)
                dtv = tl.where(m, dtv, 0.0)  # a row past the end neither decays nor feeds the state
                x = tl.load(x_ptr + b * sx_b + row * sx_l + ds, mask=m, other=0.0).to(tl.float32)
                nm = nmask & (row < seqlen)
                Bt = tl.load(B_ptr + b * sB_b + g * sB_g + row * sB_l + ns, mask=nm, other=0.0).to(tl.float32)
                Ct = tl.load(C_ptr + b * sC_b + g * sC_g + row * sC_l + ns, mask=nm, other=0.0).to(tl.float32)
                h = tl.exp(dtv[:, None] * A) * h + (dtv * x)[:, None] * Bt[None, :]
                y = tl.sum(h * Ct[None, :], 1)
                if D_ptr is not None:
                    y += Dv * x
                if z_ptr is not None:
                    zt = tl.load(z_ptr + b * sz_b + row * sz_l + ds, mask=m, other=0.0).to(tl.float32)
                    y *= zt * tl.sigmoid(zt)
                tl.store(y_ptr + (b * seqlen + row) * dim + ds, y.to(y_ptr.dtype.element_ty), mask=m)
        else:
            rows = c * BLOCK_T + tloc
            rmask = rows < seqlen
            dtv, _ = step_size(dt_ptr, b * sdt_b, rows, rmask, sdt_l, ds, dmask, bias, SOFTPLUS)
            x = load_rows(x_ptr, b * sx_b, rows, rmask, sx_l, ds, dmask)
            Bt = load_rows(B_ptr, b * sB_b + g * sB_g, rows, rmask, sB_l, ns, nmask)
            Ct = load_rows(C_ptr, b * sC_b + g * sC_g, rows, rmask, sC_l, ns, nmask)
            a = tl.exp(dtv[:, :, None] * A[None, :, :])  # ZOH for A
            u = (dtv * x)[:, :, None] * Bt[:, None, :]  # Euler for B
            pa, pu = tl.associative_scan((a, u), 0, combine)
            hs = pa * h[None, :, :] + pu  # (BLOCK_T, BLOCK_D, BLOCK_N)
            y = tl.sum(hs * Ct[:, None, :], 2)
            h = last_row(hs, tloc, BLOCK_T - 1)  # masked rows neither decay nor add: the last row is the state
            if D_ptr is not None:
                y += Dv[None, :] * x
            if z_ptr is not None:
                zt = load_rows(z_ptr, b * sz_b, rows, rmask, sz_l, ds, dmask)
                y *= zt * tl.sigmoid(zt)
            offs = (b * seqlen + rows)[:, None] * dim + ds[None, :]
            tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])
    tl.store(final_ptr + b * dim * dstate + soffs, h, mask=smask)


def strides(t, ndim_lead: int):
    """The leading strides of t (None -> zeros), for the kernels' stride arguments."""
    return (0,) * ndim_lead if t is None else tuple(t.stride()[:ndim_lead])


def selective_scan_fwd(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
                       checkpoint: bool = False, *, config=None, checkpoint_rows=CHECKPOINT_ROWS):
    """Fused forward. x, dt, z (batch, seqlen, dim) and B, C (batch, seqlen, ngroups, dstate) with unit last
    stride; A (dim, dstate), D, dt_bias (dim,), initial_state (batch, dim, dstate) contiguous.
    `config` forces one block config; `checkpoint_rows` (a multiple of BLOCK_T) sets how often states are saved.
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
    stride_args = (*strides(x, 2), *strides(dt, 2), *strides(z, 2), *strides(B, 3), *strides(C, 3))

    def run(cfg):
        bt, bd = cfg["BLOCK_T"], cfg["BLOCK_D"]
        assert checkpoint_rows % bt == 0, (checkpoint_rows, bt)  # tiles must not straddle a checkpoint
        nblk = triton.cdiv(dpg, bd)
        _scan_fwd_kernel[(batch * ngroups * nblk,)](
            x, dt, A, B, C, D, z, dt_bias, initial_state, y, final, ckpt, *scalars, nblk, checkpoint_rows // bt, nck,
            *stride_args, SOFTPLUS=bool(dt_softplus), BLOCK_T=bt, BLOCK_D=bd, BLOCK_N=block_n(dstate),
            LOOP=cfg.get("LOOP", False), num_warps=cfg["num_warps"])

    if batch == 0:
        return y, final, ckpt
    if config is None:
        key = (x.dtype, triton.next_power_of_2(batch), triton.next_power_of_2(seqlen), dim, dstate, ngroups, D is not None, z is not None,
               checkpoint)
        config = pick("selective_scan_fwd", key, configs("fwd", dstate, dpg, loop=True), run, x.device,
                      work=x.numel())
    run(config)
    return y, final, ckpt
