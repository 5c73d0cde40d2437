"""Triton helpers shared by the causal conv1d kernels: which sequence a row belongs to, the extended input
(the conv state's columns before t = 0, then x), the conv output before the activation, and its gradient.

Version history
- v1: every kernel reads inputs through `x_ext`, so the forward, the backward and the state kernels agree on
  where a sequence starts, what precedes it (initial state or zeros) and where it ends (packed or batch rows).
"""

import triton
import triton.language as tl


@triton.jit
def row_context(seq_ptr, cu_ptr, b, rows, rmask, seqlen):
    """(seq, start, length) of each row: batch row b when seq_ptr is None, else from the packed offsets."""
    if seq_ptr is None:
        seq = b + tl.zeros_like(rows)
        start = tl.zeros_like(rows)
        length = seqlen + tl.zeros_like(rows)
    else:
        seq = tl.load(seq_ptr + rows, mask=rmask, other=0)
        start = tl.load(cu_ptr + seq).to(tl.int32)
        length = tl.load(cu_ptr + seq + 1).to(tl.int32) - start
    return seq, start, length


@triton.jit
def x_ext(x_ptr, init_ptr, xbase, sx_l, seq, start, rel, length, ds, dmask, dim, WIDTH: tl.constexpr):
    """float32 (rows, channels) of the input at position rel of each row's sequence: x for 0 <= rel < length,
    the initial state's column WIDTH + rel for -WIDTH <= rel < 0 (zeros without one), zeros elsewhere."""
    in_x = (rel >= 0) & (rel < length)
    offs = xbase + (start + rel).to(tl.int64)[:, None] * sx_l + ds[None, :]
    v = tl.load(x_ptr + offs, mask=in_x[:, None] & dmask[None, :], other=0.0).to(tl.float32)
    if init_ptr is not None:
        in_s = (rel < 0) & (rel >= -WIDTH)
        soffs = (seq.to(tl.int64)[:, None] * dim + ds[None, :]) * WIDTH + (WIDTH + rel)[:, None]
        v += tl.load(init_ptr + soffs, mask=in_s[:, None] & dmask[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def conv_pre(x_ptr, w_ptr, bias_ptr, init_ptr, xbase, sx_l, seq, start, rel, length, ds, dmask, dim,
             WIDTH: tl.constexpr):
    """bias + sum_k w[:, k] x_ext[rel - (WIDTH - 1) + k]: the conv output before the activation, float32."""
    acc = tl.zeros((rel.shape[0], ds.shape[0]), dtype=tl.float32)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + ds, mask=dmask, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(WIDTH):
        w = tl.load(w_ptr + ds * WIDTH + k, mask=dmask, other=0.0).to(tl.float32)
        acc += w[None, :] * x_ext(x_ptr, init_ptr, xbase, sx_l, seq, start, rel - (WIDTH - 1) + k, length, ds,
                                  dmask, dim, WIDTH)
    return acc


@triton.jit
def grad_x_ext(dout_ptr, dfinal_ptr, x_ptr, w_ptr, bias_ptr, init_ptr, xbase, sx_l, dbase, seq, start, rel, rmask,
               length, ds, dmask, dim, WIDTH: tl.constexpr, SILU: tl.constexpr):
    """(d x_ext[rel], d pre[rel]) float32 for each row: x_ext[rel] feeds pre[rel + WIDTH - 1 - k] through tap k,
    and the final state's column rel - (length - WIDTH) when that lies in [0, WIDTH)."""
    dx = tl.zeros((rel.shape[0], ds.shape[0]), dtype=tl.float32)
    dpre = tl.zeros((rel.shape[0], ds.shape[0]), dtype=tl.float32)
    for k in tl.static_range(WIDTH):
        t = rel + (WIDTH - 1) - k
        valid = rmask & (t >= 0) & (t < length)
        offs = dbase + (start + t).to(tl.int64)[:, None] * dim + ds[None, :]
        dp = tl.load(dout_ptr + offs, mask=valid[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        if SILU:
            p = conv_pre(x_ptr, w_ptr, bias_ptr, init_ptr, xbase, sx_l, seq, start, t, length, ds, dmask, dim,
                         WIDTH)
            s = tl.sigmoid(p)
            dp = dp * s * (1.0 + p * (1.0 - s))
        w = tl.load(w_ptr + ds * WIDTH + k, mask=dmask, other=0.0).to(tl.float32)
        dx += w[None, :] * dp
        if k == WIDTH - 1:
            dpre = dp
    if dfinal_ptr is not None:
        j = rel - (length - WIDTH)
        fmask = rmask & (j >= 0) & (j < WIDTH)
        foffs = (seq.to(tl.int64)[:, None] * dim + ds[None, :]) * WIDTH + j[:, None]
        dx += tl.load(dfinal_ptr + foffs, mask=fmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
    return dx, dpre
