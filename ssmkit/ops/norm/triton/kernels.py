"""Fused (gated) RMSNorm in Triton: one pass over each group of channels forward, one pass backward.

y = weight * (h * rsqrt(mean(h^2) + eps)) with h = x (RMSNorm), h = x * silu(z) (gated, norm_before_gate=False)
or, for norm_before_gate=True, y = weight * norm(x) * silu(z); groups are contiguous blocks of group_size channels.

Version history
- v1: forward: one program per (block of rows, group), the group held in registers, the per-row 1/rms saved
  for the backward; the casts of `reference.py` (normalized value rounded to x.dtype before the weight product,
  the product rounded to the output dtype) are repeated so that 16-bit outputs round the same way.
  Backward: a fixed number of programs per group walk the rows, so the weight gradient is summed in registers
  and written once per program (a (programs, dim) float32 partial, summed on the host), not once per row.
- v2: a forward-only residual add + RMSNorm (a pre-norm block's add fused into the next norm), for decode: on an
  H100 a graph-captured step spent ~6 us per norm on the add, the cast and the norm launched separately.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# A group is held in registers whole; wider groups fall back to the reference (see __init__.py).
MAX_GROUP = 32768


@triton.jit
def _silu_parts(z):
    """(silu(z), d silu / dz) in float32."""
    s = tl.sigmoid(z)
    return z * s, s * (1.0 + z * (1.0 - s))


@triton.jit
def _gated_rms_norm_fwd_kernel(x_ptr, z_ptr, w_ptr, out_ptr, rstd_ptr, nrows, dim, group_size, ngroups, eps,
                               NORM_BEFORE_GATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """x, z, out (nrows, dim) row-major; w (dim,); rstd (nrows, ngroups) float32."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    g = tl.program_id(1)
    cols = tl.arange(0, BLOCK_G)
    rmask = rows < nrows
    cmask = cols < group_size
    mask = rmask[:, None] & cmask[None, :]
    offs = rows.to(tl.int64)[:, None] * dim + g * group_size + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    h = x.to(tl.float32)
    if z_ptr is not None:
        zf = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gate = zf * tl.sigmoid(zf)
        if not NORM_BEFORE_GATE:
            h = h * gate
    rstd = tl.rsqrt(tl.sum(h * h, 1) / group_size + eps)
    tl.store(rstd_ptr + rows * ngroups + g, rstd, mask=rmask)
    # The reference rounds the normalized value to x.dtype, then multiplies by the weight in the output dtype.
    normed = (h * rstd[:, None]).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + g * group_size + cols, mask=cmask, other=0.0).to(tl.float32)
    out = (w[None, :] * normed).to(out_ptr.dtype.element_ty)
    if z_ptr is not None:
        if NORM_BEFORE_GATE:
            out = (out.to(tl.float32) * gate.to(x.dtype).to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs, out, mask=mask)


@triton.jit
def _round(v, ROUND: tl.constexpr):
    """v (float32) rounded through ROUND's dtype: 0 none (float32), 1 bfloat16, 2 float16."""
    if ROUND == 1:
        v = v.to(tl.bfloat16).to(tl.float32)
    elif ROUND == 2:
        v = v.to(tl.float16).to(tl.float32)
    return v


@triton.jit
def _add_rms_norm_fwd_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, nrows, dim, eps,
                             NORM_ROUND: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """x, res (may be None), out, res_out (nrows, dim) row-major; w (dim,). res_out = res + x (its dtype);
    out = w * round(norm(round(res_out))), rounding through the norm dtype NORM_ROUND."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_G)
    rmask = rows < nrows
    cmask = cols < dim
    mask = rmask[:, None] & cmask[None, :]
    offs = rows.to(tl.int64)[:, None] * dim + cols[None, :]
    r = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if res_ptr is not None:
        r += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = r.to(res_out_ptr.dtype.element_ty)
    tl.store(res_out_ptr + offs, r, mask=mask)
    h = _round(r.to(tl.float32), NORM_ROUND)
    rstd = tl.rsqrt(tl.sum(h * h, 1) / dim + eps)
    normed = _round(h * rstd[:, None], NORM_ROUND)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (w[None, :] * normed).to(out_ptr.dtype.element_ty), mask=mask)


ROUNDING = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def add_rms_norm_fwd(x, residual, weight, eps, residual_dtype, norm_dtype):
    """x, residual (nrows, dim) contiguous (residual may be None); weight (dim,). Returns (out (nrows, dim) in
    promote(norm_dtype, weight.dtype), new residual (nrows, dim) in residual_dtype)."""
    nrows, dim = x.shape
    out = torch.empty(nrows, dim, device=x.device, dtype=torch.promote_types(norm_dtype, weight.dtype))
    res_out = torch.empty(nrows, dim, device=x.device, dtype=residual_dtype)
    block_m, block_g, warps = _blocks(dim)
    if nrows > 0:
        _add_rms_norm_fwd_kernel[(triton.cdiv(nrows, block_m),)](
            x, residual, weight, out, res_out, nrows, dim, float(eps), NORM_ROUND=ROUNDING[norm_dtype],
            BLOCK_M=block_m, BLOCK_G=block_g, num_warps=warps)
    return out, res_out


@triton.jit
def _gated_rms_norm_bwd_kernel(dout_ptr, x_ptr, z_ptr, w_ptr, rstd_ptr, dx_ptr, dz_ptr, dw_ptr,
                               nrows, dim, group_size, ngroups, nprog,
                               NORM_BEFORE_GATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """Gradients of x, z (like x) and the weight partial dw (nprog, dim) float32, for one group."""
    pid = tl.program_id(0)
    g = tl.program_id(1)
    cols = tl.arange(0, BLOCK_G)
    cmask = cols < group_size
    w = tl.load(w_ptr + g * group_size + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for rb in range(pid, tl.cdiv(nrows, BLOCK_M), nprog):
        rows = rb * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < nrows
        mask = rmask[:, None] & cmask[None, :]
        offs = rows.to(tl.int64)[:, None] * dim + g * group_size + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows * ngroups + g, mask=rmask, other=0.0)
        h = x
        if z_ptr is not None:
            zf = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            gate, dgate_dz = _silu_parts(zf)
            if not NORM_BEFORE_GATE:
                h = x * gate
        normed = h * rstd[:, None]
        if z_ptr is not None:
            if NORM_BEFORE_GATE:  # y = (w * n) * gate
                dgate = dout * w[None, :] * normed
                dout = dout * gate
        dw += tl.sum(dout * normed, 0)
        dn = dout * w[None, :]
        # d/dh of h * rstd(h): rstd * (dn - h * rstd^2 * mean(dn * h)) over the group
        dh = rstd[:, None] * (dn - h * (rstd * rstd * tl.sum(dn * h, 1) / group_size)[:, None])
        dx = dh
        if z_ptr is not None:
            if not NORM_BEFORE_GATE:  # h = x * gate
                dgate = dh * x
                dx = dh * gate
            tl.store(dz_ptr + offs, (dgate * dgate_dz).to(dz_ptr.dtype.element_ty), mask=mask)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_ptr + pid * dim + g * group_size + cols, dw, mask=cmask)


def _blocks(group_size: int) -> tuple[int, int, int]:
    """(BLOCK_M rows, BLOCK_G channels, num_warps): about 4K float32 values per program."""
    block_g = triton.next_power_of_2(group_size)
    block_m = max(1, min(16, 4096 // block_g))
    warps = max(1, min(16, block_m * block_g // 512))
    return block_m, block_g, warps


def gated_rms_norm_fwd(x, z, weight, eps, group_size, norm_before_gate):
    """x, z (nrows, dim) contiguous (z may be None); weight (dim,); group_size divides dim.

    Returns (out (nrows, dim) in promote(x.dtype, weight.dtype), rstd (nrows, dim // group_size) float32).
    """
    nrows, dim = x.shape
    ngroups = dim // group_size
    out = torch.empty(nrows, dim, device=x.device, dtype=torch.promote_types(x.dtype, weight.dtype))
    rstd = torch.empty(nrows, ngroups, device=x.device, dtype=torch.float32)
    block_m, block_g, warps = _blocks(group_size)
    if nrows > 0:
        grid = (triton.cdiv(nrows, block_m), ngroups)
        _gated_rms_norm_fwd_kernel[grid](x, z, weight, out, rstd, nrows, dim, group_size, ngroups, float(eps),
                                         NORM_BEFORE_GATE=bool(norm_before_gate), BLOCK_M=block_m,
                                         BLOCK_G=block_g, num_warps=warps)
    return out, rstd


def backward_programs(nrows: int, block_m: int, device: torch.device) -> int:
    """Programs per group in the backward: enough to fill the GPU twice, never more than row blocks."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    return max(1, min(triton.cdiv(nrows, block_m), 2 * sms))


def gated_rms_norm_bwd(dout, x, z, weight, rstd, group_size, norm_before_gate):
    """dout, x, z (nrows, dim) contiguous; rstd from the forward. Returns (dx like x, dz like z or None,
    dweight like weight)."""
    nrows, dim = x.shape
    ngroups = dim // group_size
    block_m, block_g, warps = _blocks(group_size)
    nprog = backward_programs(nrows, block_m, x.device)
    dx = torch.empty_like(x)
    dz = None if z is None else torch.empty_like(z)
    dw = torch.zeros(nprog, dim, device=x.device, dtype=torch.float32)
    if nrows > 0:
        _gated_rms_norm_bwd_kernel[(nprog, ngroups)](dout, x, z, weight, rstd, dx, dz, dw, nrows, dim, group_size,
                                                     ngroups, nprog, NORM_BEFORE_GATE=bool(norm_before_gate),
                                                     BLOCK_M=block_m, BLOCK_G=block_g, num_warps=warps)
    return dx, dz, dw.sum(0).to(weight.dtype)
