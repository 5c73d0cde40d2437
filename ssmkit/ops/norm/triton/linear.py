"""RMSNorm (gated, grouped, after a residual add) with the next linear layer fused in, for decode-sized batches.

out = (norm_weight * norm(h)) @ weight^T where h = x * silu(z) (gated) or h = residual + x (rounded to the
stream's dtype, then to the norm's dtype) or h = x. A decode step runs the norm and the projection as two
launches of a few microseconds each per layer; every program here recomputes the row statistics of its (at most 16)
rows, which are a few KB, and then reads its own block of output features of the weight: one launch, the weight
read once.

The casts are those of the unfused ops (reference.py): the normalized value rounded to the norm dtype, the product
with the norm weight rounded to the output dtype of the norm, the projection accumulated in float32 and rounded to
its output dtype. Only the order of the sums differs (within a rounding of the output dtype).

Version history
- v1: grid (output-feature blocks,). Two passes over the input features: sums of squares per row and group, then
  normalized blocks times weight blocks through tl.dot (rows padded to 16). Rows beyond 16 are the caller's to
  split. Written and checked in the interpreter on 2026-11-25; not yet timed on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kernels import ROUNDING, _round

MAX_ROWS = 16  # tl.dot needs 16 rows; decode batches above this run the unfused ops
BLOCK_K = 128


@triton.jit
def _norm_rows(x_ptr, res_ptr, z_ptr, res_out_ptr, rows, rmask, ks, kmask, sx, sres, sz, sres_out, write,
               WRITE_RES: tl.constexpr, NORM_ROUND: tl.constexpr):
    """(rows, ks) of h in float32: residual + x rounded to res_out's dtype (stored when WRITE_RES and `write`, the
    first program's first pass) then to the norm dtype, or x * silu(z), or x."""
    mask = rmask[:, None] & kmask[None, :]
    h = tl.load(x_ptr + rows[:, None] * sx + ks[None, :], mask=mask, other=0.0).to(tl.float32)
    if res_out_ptr is not None:
        if res_ptr is not None:
            h += tl.load(res_ptr + rows[:, None] * sres + ks[None, :], mask=mask, other=0.0).to(tl.float32)
        h = h.to(res_out_ptr.dtype.element_ty)
        if WRITE_RES:
            tl.store(res_out_ptr + rows[:, None] * sres_out + ks[None, :], h, mask=mask & write)
        h = _round(h.to(tl.float32), NORM_ROUND)
    if z_ptr is not None:
        zt = tl.load(z_ptr + rows[:, None] * sz + ks[None, :], mask=mask, other=0.0).to(tl.float32)
        h = h * (zt * tl.sigmoid(zt))
    return h


@triton.jit
def _norm_linear_kernel(x_ptr, res_ptr, z_ptr, nw_ptr, w_ptr, out_ptr, res_out_ptr, M, K, N, group_size, eps,
                        sx, sres, sz, sw, sout, sres_out, NORM_ROUND: tl.constexpr, NORMED_ROUND: tl.constexpr,
                        NG: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """x, z, residual, res_out (M, K) and out (M, N) with row strides; nw (K,); w (N, K) with row stride sw.
    NG: groups padded to a power of two (group g = channels g*group_size .. (g+1)*group_size - 1)."""
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    rmask = rows < M
    gs = tl.arange(0, NG)
    ss = tl.zeros((BLOCK_M, NG), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        h = _norm_rows(x_ptr, res_ptr, z_ptr, res_out_ptr, rows, rmask, ks, kmask, sx, sres, sz, sres_out,
                       pid == 0, True, NORM_ROUND)
        if NG == 1:
            ss += tl.sum(h * h, 1)[:, None]
        else:
            onehot = ((ks // group_size)[:, None] == gs[None, :]).to(tl.float32)  # (BLOCK_K, NG)
            ss += tl.sum((h * h)[:, :, None] * onehot[None, :, :], 1)
    rstd = tl.rsqrt(ss / group_size + eps)  # (BLOCK_M, NG)
    ns = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = ns < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        h = _norm_rows(x_ptr, res_ptr, z_ptr, res_out_ptr, rows, rmask, ks, kmask, sx, sres, sz, sres_out,
                       False, False, NORM_ROUND)
        if NG == 1:
            r = rstd  # (BLOCK_M, 1)
        else:
            onehot = ((ks // group_size)[:, None] == gs[None, :]).to(tl.float32)
            r = tl.sum(rstd[:, None, :] * onehot[None, :, :], 2)  # (BLOCK_M, BLOCK_K)
        normed = _round(h * r, NORMED_ROUND)
        nw = tl.load(nw_ptr + ks, mask=kmask, other=0.0).to(tl.float32)
        a = (nw[None, :] * normed).to(w_ptr.dtype.element_ty)
        w = tl.load(w_ptr + ns[:, None] * sw + ks[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(w), acc, input_precision=DOT_PRECISION)
    tl.store(out_ptr + rows[:, None] * sout + ns[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & nmask[None, :])


def block_n(n: int) -> int:
    """Output features per program: narrow blocks for narrow outputs, so that they still spread over the GPU."""
    return 16 if n <= 2048 else 32


def norm_linear_fwd(x, residual, z, norm_weight, eps, group_size, weight, residual_dtype, norm_dtype):
    """Rows x (M <= MAX_ROWS, K); residual, z like x or None; norm_weight (K,); weight (N, K). residual_dtype:
    None (no residual add) or the stream's dtype; norm_dtype: the dtype the norm rounds its normalized value to.
    Returns (out (M, N) in weight.dtype, new residual (M, K) or None)."""
    m, k = x.shape
    n = weight.shape[0]
    out = torch.empty(m, n, dtype=weight.dtype, device=x.device)
    res_out = None if residual_dtype is None else torch.empty(m, k, dtype=residual_dtype, device=x.device)
    ngroups = k // group_size
    bn = block_n(n)
    precision = "ieee" if weight.dtype == torch.float32 else "tf32"
    _norm_linear_kernel[(triton.cdiv(n, bn),)](
        x, residual, z, norm_weight, weight, out, res_out, m, k, n, group_size, float(eps), x.stride(0),
        0 if residual is None else residual.stride(0), 0 if z is None else z.stride(0), weight.stride(0),
        out.stride(0), 0 if res_out is None else res_out.stride(0),
        NORM_ROUND=ROUNDING[norm_dtype] if residual_dtype is not None else 0, NORMED_ROUND=ROUNDING[norm_dtype],
        NG=triton.next_power_of_2(ngroups), DOT_PRECISION=precision, BLOCK_M=MAX_ROWS, BLOCK_N=bn,
        BLOCK_K=BLOCK_K, num_warps=4)
    return out, res_out
