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
- v3: one pass for rows of up to ONE_PASS_MAX_K channels: the program's whole weight block is loaded first, then
  the rows and their statistics (v2 read the weight in 1024-channel steps after a first pass over the rows, so
  each step waited for memory); no norm at all (`linear_fwd`, a plain GEMV); programmatic dependent launch on
  Hopper (ssmkit.ops.pdl): the weight is read before the wait for the launch before, so it streams in while that
  launch finishes; a persistent grid (Config.programs_per_sm) whose programs normalize the rows once and walk
  their blocks of output features with the next block's weight in flight. The one-pass GEMV is its own kernel
  (_norm_gemv_kernel) beside the two-pass one (_norm_linear_kernel, tensor cores or GEMV), so that each keeps
  few switches; helpers shared. Compiled for sm_90 on the CPU machine, the split left every config's registers
  and instruction count as they were.
- v4: a conv decode step as the one-pass GEMV's epilogue (`conv`, ssmkit.ops.conv1d.ConvStep): the output features
  of a Mamba / Mamba-2 in_proj that feed the mixer's short conv come out convolved (and SiLU'd), each feature's
  conv state rolled by the one program that computes it (no other program reads it, so no launch boundary is
  needed between the read and the write). The separate conv step launch per layer and token goes. Same roundings
  as the two launches: the projection rounded to its dtype, then to the state's, the filter summed in float32.
  Up to three weights stacked in one launch (an attention layer's q, k, v, a SwiGLU's gate and up after the same
  norm): each output feature's weight row is picked by its index, so nothing is concatenated in memory.
- v5: greedy decoding's argmax as the one-pass GEMV's epilogue (`argmax`, the LM head of a one-row step): each
  program keeps its rows' largest packed key (ssmkit.ops.argmax_keys: the rounded output's value, then the
  smaller index) over the blocks it walks and folds it into an (M,) int64 buffer with one atomic maximum per
  row. The argmax launch over the logits after the LM head goes, and the feedback that consumes the keys is one
  small launch (ssmkit.ops.argmax_keys.triton).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ssmkit.ops.argmax_keys.triton import empty_keys, packed_keys
from ssmkit.ops.dispatch import cuda_sm_count
from ssmkit.ops.pdl import pdl_options, wait_for_previous

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
def _group_sumsq(h, ks, group_size, NG: tl.constexpr):
    """Sums of squares of h (BLOCK_M, BLOCK_K) per row and channel group: (BLOCK_M, NG)."""
    if NG == 1:
        return tl.sum(h * h, 1)[:, None]
    onehot = ((ks // group_size)[:, None] == tl.arange(0, NG)[None, :]).to(tl.float32)  # (BLOCK_K, NG)
    return tl.sum((h * h)[:, :, None] * onehot[None, :, :], 1)


@triton.jit
def _activation(h, rstd, ks, kmask, nw_ptr, group_size, NG: tl.constexpr, NORMED_ROUND: tl.constexpr, dtype):
    """nw * round(h * rstd) in the weight's dtype for one block of channels ks; h itself without a norm."""
    a = h
    if nw_ptr is not None:
        if NG == 1:
            r = rstd  # (BLOCK_M, 1)
        else:
            onehot = ((ks // group_size)[:, None] == tl.arange(0, NG)[None, :]).to(tl.float32)
            r = tl.sum(rstd[:, None, :] * onehot[None, :, :], 2)  # (BLOCK_M, BLOCK_K)
        normed = _round(h * r, NORMED_ROUND)
        a = tl.load(nw_ptr + ks, mask=kmask, other=0.0).to(tl.float32)[None, :] * normed
    return a.to(dtype)


@triton.jit
def _times_weight(a, w, acc, DOT_PRECISION: tl.constexpr, USE_DOT: tl.constexpr):
    """acc + a @ w^T; a (BLOCK_M, BLOCK_K), w (BLOCK_N, BLOCK_K)."""
    if USE_DOT:
        return tl.dot(a, tl.trans(w), acc, input_precision=DOT_PRECISION)
    return acc + tl.sum(a.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], 2)


@triton.jit
def _weight_rows(w_ptr, w2_ptr, w3_ptr, ns, n1, n2, sw):
    """Row pointers of output features ns in up to three stacked weights of one row stride: features 0 .. n1 - 1
    are w's rows, the next n2 w2's, the rest w3's (a layer's q, k, v or gate, up: one launch for all)."""
    rows = w_ptr + ns * sw
    if w2_ptr is not None:
        rows = tl.where(ns >= n1, w2_ptr + (ns - n1) * sw, rows)
    if w3_ptr is not None:
        rows = tl.where(ns >= n1 + n2, w3_ptr + (ns - n1 - n2) * sw, rows)
    return rows


@triton.jit
def _conv_window(cs_ptr, rows, rmask, ns, conv_lo, conv_dim, scs_b, scs_d, scs_w, CONV_W: tl.constexpr,
                 BLOCK_W: tl.constexpr):
    """The conv state of output features ns shifted by one (slot j holds state slot j + 1, the last slot 0: the
    new input goes there), (BLOCK_M, BLOCK_N, BLOCK_W); zeros outside the conv's features conv_lo ..
    conv_lo + conv_dim - 1."""
    c = ns - conv_lo
    j = tl.arange(0, BLOCK_W)
    mask = rmask[:, None, None] & ((c >= 0) & (c < conv_dim))[None, :, None] & (j + 1 < CONV_W)[None, None, :]
    offs = rows.to(tl.int64)[:, None, None] * scs_b + c[None, :, None] * scs_d + (j + 1)[None, None, :] * scs_w
    return tl.load(cs_ptr + offs, mask=mask, other=0.0)


@triton.jit
def _conv_epilogue(y, window, cs_ptr, cw_ptr, cb_ptr, rows, rmask, ns, conv_lo, conv_dim, scs_b, scs_d, scs_w,
                   CONV_W: tl.constexpr, BLOCK_W: tl.constexpr, CONV_SILU: tl.constexpr):
    """y (BLOCK_M, BLOCK_N), the projection rounded to its output dtype -> the same with the conv's features
    replaced by the conv step's output (float32), their state rolled in place to end with y: the arithmetic of
    ssmkit.ops.conv1d's step kernel. `window` from _conv_window for the same features."""
    c = ns - conv_lo
    cmask = (c >= 0) & (c < conv_dim)
    j = tl.arange(0, BLOCK_W)
    new = tl.where((j == CONV_W - 1)[None, None, :], y.to(cs_ptr.dtype.element_ty)[:, :, None], window)
    w = tl.load(cw_ptr + c[:, None] * CONV_W + j[None, :], mask=cmask[:, None] & (j < CONV_W)[None, :], other=0.0)
    v = tl.sum(new.to(tl.float32) * w.to(tl.float32)[None, :, :], 2)
    if cb_ptr is not None:
        v += tl.load(cb_ptr + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if CONV_SILU:
        v = v * tl.sigmoid(v)
    tl.debug_barrier()  # every thread's window read is done before any thread's write
    offs = rows.to(tl.int64)[:, None, None] * scs_b + c[None, :, None] * scs_d + j[None, None, :] * scs_w
    tl.store(cs_ptr + offs, new, mask=rmask[:, None, None] & cmask[None, :, None] & (j < CONV_W)[None, None, :])
    return tl.where(cmask[None, :], v, y.to(tl.float32))


@triton.jit
def _norm_gemv_kernel(x_ptr, res_ptr, z_ptr, nw_ptr, w_ptr, out_ptr, res_out_ptr, M, K, N, group_size, eps,
                      sx, sres, sz, sw, sout, sres_out, w2_ptr, w3_ptr, n1, n2, cs_ptr, cw_ptr, cb_ptr, conv_lo,
                      conv_dim, scs_b, scs_d, scs_w, argmax_ptr, NORM_ROUND: tl.constexpr,
                      NORMED_ROUND: tl.constexpr, NG: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      PERSISTENT: tl.constexpr, PDL: tl.constexpr, CONV_W: tl.constexpr = 1,
                      BLOCK_W: tl.constexpr = 1, CONV_SILU: tl.constexpr = False):
    """A few rows (a decode step's one) held whole (BLOCK_K >= K): the weight block is loaded before the rows and
    their statistics, so its bytes are in flight while they are computed; products summed in float32.
    Arguments as _norm_linear_kernel's. PERSISTENT: a grid smaller than the blocks of output features; each program
    normalizes the rows once and walks blocks pid, pid + grid, ..., loading the next block's weight before it
    multiplies by the current one (two blocks in registers). PDL (ssmkit.ops.pdl): the weight, which no launch
    writes, is the only read before the wait. w2_ptr, w3_ptr: None, or weights stacked after w (_weight_rows;
    N = n1 + n2 + the third's rows). cs_ptr (conv state (M, conv_dim, CONV_W), strides scs_*) or None:
    features conv_lo .. conv_lo + conv_dim - 1 go through a conv step (weight cw (conv_dim, CONV_W) contiguous,
    bias cb or None, SiLU when CONV_SILU; BLOCK_W = CONV_W rounded up to a power of two), the next block's state
    window read with its weight. argmax_ptr ((M,) int64 packed keys, ssmkit.ops.argmax_keys) or None: each row's
    largest key over the program's blocks of the output as stored, folded in with one atomic maximum."""
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    rmask = rows < M
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    n0 = pid * BLOCK_N
    ns = n0 + tl.arange(0, BLOCK_N)
    w = tl.load(_weight_rows(w_ptr, w2_ptr, w3_ptr, ns, n1, n2, sw)[:, None] + ks[None, :],
                mask=(ns < N)[:, None] & kmask[None, :], other=0.0)
    wait_for_previous(PDL)
    window = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_W), dtype=tl.float32)
    if cs_ptr is not None:
        window = _conv_window(cs_ptr, rows, rmask, ns, conv_lo, conv_dim, scs_b, scs_d, scs_w, CONV_W, BLOCK_W)
    h = _norm_rows(x_ptr, res_ptr, z_ptr, res_out_ptr, rows, rmask, ks, kmask, sx, sres, sz, sres_out, pid == 0,
                   True, NORM_ROUND)
    rstd = _group_sumsq(h, ks, group_size, NG)  # the sums of squares: unused without a norm
    if nw_ptr is not None:
        rstd = tl.rsqrt(rstd / group_size + eps)
    a = _activation(h, rstd, ks, kmask, nw_ptr, group_size, NG, NORMED_ROUND, w.dtype)
    step = tl.num_programs(0) * BLOCK_N if PERSISTENT else N
    best = empty_keys(BLOCK_M)  # the largest key of each row in this program's blocks
    while n0 < N:  # one block, or (PERSISTENT) blocks pid, pid + grid, ... with the next one's weight in flight
        nxt = n0 + step + tl.arange(0, BLOCK_N)
        w_next = w
        window_next = window
        if PERSISTENT:
            w_next = tl.load(_weight_rows(w_ptr, w2_ptr, w3_ptr, nxt, n1, n2, sw)[:, None] + ks[None, :],
                             mask=(nxt < N)[:, None] & kmask[None, :], other=0.0)
            if cs_ptr is not None:
                window_next = _conv_window(cs_ptr, rows, rmask, nxt, conv_lo, conv_dim, scs_b, scs_d, scs_w,
                                           CONV_W, BLOCK_W)
        out = _times_weight(a, w, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), "ieee", False)
        ns = n0 + tl.arange(0, BLOCK_N)
        out = out.to(out_ptr.dtype.element_ty)
        if cs_ptr is not None:
            out = _conv_epilogue(out, window, cs_ptr, cw_ptr, cb_ptr, rows, rmask, ns, conv_lo, conv_dim, scs_b,
                                 scs_d, scs_w, CONV_W, BLOCK_W, CONV_SILU).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + rows[:, None] * sout + ns[None, :], out, mask=rmask[:, None] & (ns < N)[None, :])
        if argmax_ptr is not None:
            best = tl.maximum(best, tl.max(packed_keys(out.to(tl.float32), ns[None, :], (ns < N)[None, :]), 1))
        w = w_next
        window = window_next
        n0 += step
    if argmax_ptr is not None:
        tl.atomic_max(argmax_ptr + rows, best, mask=rmask, sem="relaxed")  # ordered by the launch boundary


@triton.jit
def _norm_linear_kernel(x_ptr, res_ptr, z_ptr, nw_ptr, w_ptr, out_ptr, res_out_ptr, M, K, N, group_size, eps,
                        sx, sres, sz, sw, sout, sres_out, NORM_ROUND: tl.constexpr, NORMED_ROUND: tl.constexpr,
                        NG: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_DOT: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """x, z, residual, res_out (M, K) and out (M, N) with row strides; nw (K,) or None (no norm); w (N, K) with row
    stride sw. NG: groups padded to a power of two (group g = channels g*group_size .. (g+1)*group_size - 1).
    Two passes over the channels in blocks of BLOCK_K: the rows' statistics, then the projection. USE_DOT: the
    inner product on tensor cores (BLOCK_M = 16) or as a GEMV (BLOCK_M rows, products summed in float32).
    PDL (ssmkit.ops.pdl): waits for the launch before it first thing."""
    pid = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    rmask = rows < M
    ns = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = ns < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    wait_for_previous(PDL)
    ss = tl.zeros((BLOCK_M, NG), dtype=tl.float32)
    if nw_ptr is not None:
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < K
            h = _norm_rows(x_ptr, res_ptr, z_ptr, res_out_ptr, rows, rmask, ks, kmask, sx, sres, sz, sres_out,
                           pid == 0, True, NORM_ROUND)
            ss += _group_sumsq(h, ks, group_size, NG)
    rstd = ss  # unused without a norm
    if nw_ptr is not None:
        rstd = tl.rsqrt(ss / group_size + eps)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        h = _norm_rows(x_ptr, res_ptr, z_ptr, res_out_ptr, rows, rmask, ks, kmask, sx, sres, sz, sres_out,
                       False, False, NORM_ROUND)
        w = tl.load(w_ptr + ns[:, None] * sw + ks[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
        a = _activation(h, rstd, ks, kmask, nw_ptr, group_size, NG, NORMED_ROUND, w.dtype)
        acc = _times_weight(a, w, acc, DOT_PRECISION, USE_DOT)
    tl.store(out_ptr + rows[:, None] * sout + ns[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & nmask[None, :])


class Config(NamedTuple):
    """One launch shape: BLOCK_N output features and BLOCK_K channels per step of a program (0: the whole row in
    one step, one pass), tensor cores or GEMV, warps and software-pipeline stages; programs_per_sm > 0 (one pass
    only): a persistent grid of that many programs per multiprocessor."""
    block_n: int
    block_k: int
    use_dot: bool
    num_warps: int
    num_stages: int
    programs_per_sm: int = 0


# The sweeps on an H100, per call inside a CUDA graph, weights overflowing L2 (benchmarks/norm_linear_gpu.py):
# 2026-11-25 (norm-linear-h100-2026-11-25.md): at 4 and 16 rows every fused shape was slower than the norm launch
# + cuBLAS. 2026-12-07 (norm-linear-h100-2026-12-07.md), one row: the whole row in one pass on a persistent grid
# of 4 programs per multiprocessor (2 for rows over 4096 channels) beat the two-pass GEMV, the two launches and,
# without a norm, cuBLAS alone at every projection of Mamba-2 130M / 1.3B, Transformer++ 1.3B and Mamba 1.4B:
# e.g. Mamba-2 1.3B in_proj 12.7 us (2.7 TB/s) against 16.9 composed, out_proj 7.0 against 13.3, Mamba 1.4B
# in_proj 11.3 (3.0 TB/s) against cuBLAS's 13.5.
ONE_PASS_MAX_K = 8192  # widest row held whole in one program's registers
FASTER_MAX_WEIGHT = 9 * 2 ** 20  # two-pass (rows wider than ONE_PASS_MAX_K): weight elements up to which it won


def faster_than_unfused(m: int, k: int, n: int) -> bool:
    """Whether the sweeps found the fused launch faster than norm then cuBLAS, for m rows and an (n, k) weight."""
    return m == 1 and (k <= ONE_PASS_MAX_K or n * k <= FASTER_MAX_WEIGHT)


def pick_config(m: int, k: int, n: int, norm: bool = True) -> Config:
    """The launch shape for m rows, k input and n output features (norm: whether a norm comes first; the sweep
    found the same shapes best with and without). One row: the whole row in one pass on a persistent grid, blocks
    of 4 output features for rows of up to 2048 channels and more than 2048 features, else 2, 4 warps and 4
    programs an SM, rows over 4096 channels 8 warps and 2 programs (on sm_90 wider blocks or fewer warps spill
    there: kernel-resources-gemv-sm90-cpu-2026-12-07.md); rows wider than ONE_PASS_MAX_K: two passes of 1024
    channels. More rows: tensor cores."""
    if m == 1 and k <= ONE_PASS_MAX_K:
        wide = k > 4096
        return Config(4 if n > 2048 and k <= 2048 else 2, 0, False, 8 if wide else 4, 1, 2 if wide else 4)
    if m == 1:
        return Config(4, 1024, False, 4, 1)
    return Config(32, 256, True, 4, 3)


def one_pass(config: Config, k: int) -> bool:
    """Whether `config` runs _norm_gemv_kernel (the whole row in one block, no tensor cores) for rows of k."""
    return not config.use_dot and (config.block_k or triton.next_power_of_2(k)) >= k


def norm_linear_fwd(x, residual, z, norm_weight, eps, group_size, weight, residual_dtype, norm_dtype,
                    config: Config | None = None, conv=None, argmax=None):
    """Rows x (M <= MAX_ROWS, K); residual, z like x or None; norm_weight (K,) or None (no norm: x @ weight^T);
    weight (N, K), or a tuple of up to three (N_i, K) of one dtype and row stride whose outputs come stacked (the
    one-pass GEMV only). residual_dtype: None (no residual add) or the stream's dtype; norm_dtype: the dtype the norm
    rounds its normalized value to. config: the launch shape (None = pick_config's): a GEMV whose block holds the
    whole row runs _norm_gemv_kernel, anything else _norm_linear_kernel. conv: a ssmkit.ops.conv1d.ConvStep (state
    (M, dim, width), weight (dim, width) contiguous) finished in _norm_gemv_kernel's epilogue (a config that runs
    _norm_linear_kernel is refused). argmax: (M,) int64 packed keys (ssmkit.ops.argmax_keys, EMPTY_KEY or earlier
    keys) into which each row's largest key of out is folded by _norm_gemv_kernel's epilogue (likewise refused
    for a config that runs _norm_linear_kernel). Returns (out (M, N) in weight.dtype, new residual (M, K) or
    None)."""
    m, k = x.shape
    stacked = tuple(weight) if isinstance(weight, (tuple, list)) else (weight,)
    weight = stacked[0]
    n = sum(w.shape[0] for w in stacked)
    cfg = pick_config(m, k, n, norm_weight is not None) if config is None else config
    if (conv is not None or argmax is not None or len(stacked) > 1) and not one_pass(cfg, k):
        raise ValueError(f"conv, argmax, stacked weights: the one-pass GEMV's alone, not config {cfg}")
    if len(stacked) > 3 or any(w.stride(0) != weight.stride(0) or w.dtype != weight.dtype for w in stacked):
        raise ValueError("weight: expected at most three stacked weights of one dtype and row stride")
    out = torch.empty(m, n, dtype=weight.dtype, device=x.device)
    res_out = None if residual_dtype is None else torch.empty(m, k, dtype=residual_dtype, device=x.device)
    block_k = cfg.block_k or triton.next_power_of_2(k)
    args = (x, residual, z, norm_weight, weight, out, res_out, m, k, n, group_size, float(eps), x.stride(0),
            0 if residual is None else residual.stride(0), 0 if z is None else z.stride(0), weight.stride(0),
            out.stride(0), 0 if res_out is None else res_out.stride(0))
    meta = dict(NORM_ROUND=ROUNDING[norm_dtype] if residual_dtype is not None else 0,
                NORMED_ROUND=ROUNDING[norm_dtype], NG=triton.next_power_of_2(k // group_size), BLOCK_N=cfg.block_n,
                BLOCK_K=block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_options(x.device))
    blocks = triton.cdiv(n, cfg.block_n)
    if one_pass(cfg, k):
        persistent = cfg.programs_per_sm > 0
        sms = cuda_sm_count(x.device) if x.is_cuda else 1  # the interpreter: programs_per_sm programs walk them all
        grid = min(blocks, cfg.programs_per_sm * sms) if persistent else blocks
        rest = stacked[1:] + (None,) * (3 - len(stacked))
        stack_args = (*rest, stacked[0].shape[0], stacked[1].shape[0] if len(stacked) > 2 else 0)
        conv_args = (None, None, None, 0, 0, 0, 0, 0)
        if conv is not None:
            conv_args = (conv.state, conv.weight, conv.bias, conv.start, conv.state.shape[1], *conv.state.stride())
            width = conv.state.shape[2]
            meta.update(CONV_W=width, BLOCK_W=triton.next_power_of_2(width), CONV_SILU=conv.activation == "silu")
        _norm_gemv_kernel[(grid,)](*args, *stack_args, *conv_args, argmax, BLOCK_M=triton.next_power_of_2(m),
                                   PERSISTENT=persistent, **meta)
    else:
        _norm_linear_kernel[(blocks,)](*args, DOT_PRECISION="ieee" if weight.dtype == torch.float32 else "tf32",
                                       USE_DOT=cfg.use_dot, BLOCK_M=MAX_ROWS if cfg.use_dot else
                                       triton.next_power_of_2(m), **meta)
    return out, res_out


def linear_fwd(x, weight, config: Config | None = None, gate=None):
    """x (M <= MAX_ROWS, K) @ weight (N, K)^T in weight.dtype, through the same kernels without a norm; with gate
    (like x), (x * silu(gate)) @ weight^T."""
    return norm_linear_fwd(x, None, gate, None, 0.0, x.shape[1], weight, None, x.dtype, config)[0]
