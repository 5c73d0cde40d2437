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
  split. Correct on an H100 (2026-11-25) but 2.6x slower than the two unfused launches (12.8 us against ~4.7 +
  2 us for Mamba-2 130M's projections): 16- or 32-feature blocks over a 128-channel inner loop left too few
  bytes of the weight in flight.
- v2: the block shape, the inner product (tl.dot on rows padded to 16, or broadcast products summed over the
  channels for a few rows: a GEMV) and the launch's warps and pipeline stages are a `Config`, picked per shape by
  `pick_config` from a sweep on an H100 (benchmarks/norm_linear_gpu.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .kernels import ROUNDING, _round

MAX_ROWS = 16  # tl.dot needs 16 rows; decode batches above this run the unfused ops


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
                        NG: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_DOT: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """x, z, residual, res_out (M, K) and out (M, N) with row strides; nw (K,); w (N, K) with row stride sw.
    NG: groups padded to a power of two (group g = channels g*group_size .. (g+1)*group_size - 1). USE_DOT: the
    inner product on tensor cores (BLOCK_M = 16) or as a GEMV (BLOCK_M rows, products summed in float32)."""
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
        if USE_DOT:
            acc = tl.dot(a, tl.trans(w), acc, input_precision=DOT_PRECISION)
        else:
            acc += tl.sum(a.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], 2)
    tl.store(out_ptr + rows[:, None] * sout + ns[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & nmask[None, :])


class Config(NamedTuple):
    """One launch shape: BLOCK_N output features and BLOCK_K channels per step of a program, tensor cores or GEMV,
    warps and software-pipeline stages."""
    block_n: int
    block_k: int
    use_dot: bool
    num_warps: int
    num_stages: int


# The sweep on an H100 (2026-11-25; benchmarks/results/norm-linear-h100-2026-11-25.md), per call inside a CUDA
# graph, weights overflowing L2: for one row, a GEMV of 4-feature blocks over 1024 channels took 5.3 us for
# Mamba-2 130M's in_proj and out_proj (norm launch + cuBLAS: 6.7 and 7.2 us) and 12.1 us for 1.3B's out_proj
# (13.4 us); 1.3B's in_proj (17.4M weights) was even (17.5 against 17.2 us). At 4 and 16 rows every fused shape
# was slower than the two launches.
FASTER_MAX_WEIGHT = 9 * 2 ** 20  # elements of the weight up to which one fused row beat the two launches


def faster_than_unfused(m: int, k: int, n: int) -> bool:
    """Whether the sweep found the fused launch faster than norm then cuBLAS, for m rows and an (n, k) weight."""
    return m == 1 and n * k <= FASTER_MAX_WEIGHT


def pick_config(m: int, k: int, n: int) -> Config:
    """The launch shape for m rows, k input and n output features: the sweep's GEMV for one row, its fastest
    tensor-core shape otherwise."""
    if m == 1:
        return Config(4, 1024, False, 4, 1)
    return Config(32, 256, True, 4, 3)


def norm_linear_fwd(x, residual, z, norm_weight, eps, group_size, weight, residual_dtype, norm_dtype,
                    config: Config | None = None):
    """Rows x (M <= MAX_ROWS, K); residual, z like x or None; norm_weight (K,); weight (N, K). residual_dtype:
    None (no residual add) or the stream's dtype; norm_dtype: the dtype the norm rounds its normalized value to.
    config: the launch shape (None = pick_config's). Returns (out (M, N) in weight.dtype, new residual (M, K) or
    None)."""
    m, k = x.shape
    n = weight.shape[0]
    cfg = pick_config(m, k, n) if config is None else config
    out = torch.empty(m, n, dtype=weight.dtype, device=x.device)
    res_out = None if residual_dtype is None else torch.empty(m, k, dtype=residual_dtype, device=x.device)
    ngroups = k // group_size
    precision = "ieee" if weight.dtype == torch.float32 else "tf32"
    _norm_linear_kernel[(triton.cdiv(n, cfg.block_n),)](
        x, residual, z, norm_weight, weight, out, res_out, m, k, n, group_size, float(eps), x.stride(0),
        0 if residual is None else residual.stride(0), 0 if z is None else z.stride(0), weight.stride(0),
        out.stride(0), 0 if res_out is None else res_out.stride(0),
        NORM_ROUND=ROUNDING[norm_dtype] if residual_dtype is not None else 0, NORMED_ROUND=ROUNDING[norm_dtype],
        NG=triton.next_power_of_2(ngroups), DOT_PRECISION=precision, USE_DOT=cfg.use_dot,
        BLOCK_M=MAX_ROWS if cfg.use_dot else triton.next_power_of_2(m), BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out, res_out
