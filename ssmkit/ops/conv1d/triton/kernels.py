"""Causal depthwise conv1d in Triton, forward and backward, SiLU fused, batch rows or packed sequences.

out[t] = act(bias + sum_k w[k] x[t - (W - 1) + k]), inputs before a sequence's start read from its initial
conv state (the last W inputs, oldest first) or are zero; the final state is the last W inputs of each sequence.

Version history
- v1: one program per (block of rows, block of channels, batch row); every tap is a shifted (rows, channels)
  tile load, so the W loads of a program hit the same cache lines. The backward recomputes the pre-activation
  at the W rows each input feeds (W^2 tile loads, no stored activations) and writes per-program partial sums
  of the weight and bias gradients (summed on the host, no atomics: the result is deterministic).
  The state gradients come from a small kernel per (sequence, channel block).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tiles import conv_pre, grad_x_ext, row_context, x_ext

BLOCK_L = 32
BLOCK_D = 64


# Length arguments are not specialized: Triton would compile a variant of every config for each class of a
# length (== 1, divisible by 16, other), a stall of seconds at a server's first prompt of each class.
@triton.jit(do_not_specialize=("seqlen",))
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, seq_ptr, cu_ptr, out_ptr, seqlen, dim, sx_b, sx_l,
                     WIDTH: tl.constexpr, SILU: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """x (batch, seqlen, dim) with unit channel stride; out (batch, seqlen, dim) contiguous."""
    b = tl.program_id(2)
    rows = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < seqlen
    dmask = ds < dim
    seq, start, length = row_context(seq_ptr, cu_ptr, b, rows, rmask, seqlen)
    xbase = b.to(tl.int64) * sx_b
    out = conv_pre(x_ptr, w_ptr, bias_ptr, init_ptr, xbase, sx_l, seq, start, rows - start, length, ds, dmask,
                   dim, WIDTH)
    if SILU:
        out = out * tl.sigmoid(out)
    offs = (b.to(tl.int64) * seqlen + rows)[:, None] * dim + ds[None, :]
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=("seqlen",))
def _conv_final_state_kernel(x_ptr, init_ptr, cu_ptr, final_ptr, seqlen, dim, sx_b, sx_l,
                             WIDTH: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr):
    """final (nseq, dim, WIDTH) contiguous: the last WIDTH entries of each sequence's extended input."""
    seq = tl.program_id(0)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < dim
    j = tl.arange(0, BLOCK_W)
    jmask = j < WIDTH
    seqs = seq + tl.zeros_like(j)
    if cu_ptr is None:
        xbase = seq.to(tl.int64) * sx_b
        start = tl.zeros_like(j)
        length = seqlen + tl.zeros_like(j)
    else:
        xbase = 0
        start = tl.load(cu_ptr + seqs).to(tl.int32)
        length = tl.load(cu_ptr + seqs + 1).to(tl.int32) - start
    v = x_ext(x_ptr, init_ptr, xbase, sx_l, seqs, start, length - WIDTH + j, length, ds, dmask, dim, WIDTH)
    offs = (seq.to(tl.int64) * dim + ds[None, :]) * WIDTH + j[:, None]
    tl.store(final_ptr + offs, v.to(final_ptr.dtype.element_ty), mask=jmask[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=("seqlen",))
def _conv_bwd_kernel(dout_ptr, dfinal_ptr, x_ptr, w_ptr, bias_ptr, init_ptr, seq_ptr, cu_ptr, dx_ptr, dw_ptr,
                     db_ptr, seqlen, dim, sx_b, sx_l, WIDTH: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """dx (batch, seqlen, dim); dw (batch * row blocks, dim, WIDTH) and db (batch * row blocks, dim) partials."""
    b = tl.program_id(2)
    lb = tl.program_id(0)
    rows = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    rmask = rows < seqlen
    dmask = ds < dim
    seq, start, length = row_context(seq_ptr, cu_ptr, b, rows, rmask, seqlen)
    rel = rows - start
    xbase = b.to(tl.int64) * sx_b
    dbase = b.to(tl.int64) * seqlen * dim
    dx, dpre = grad_x_ext(dout_ptr, dfinal_ptr, x_ptr, w_ptr, bias_ptr, init_ptr, xbase, sx_l, dbase, seq, start,
                          rel, rmask, length, ds, dmask, dim, WIDTH, SILU)
    offs = dbase + rows[:, None] * dim + ds[None, :]
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])
    part = b.to(tl.int64) * tl.num_programs(0) + lb
    for k in tl.static_range(WIDTH):
        xk = x_ext(x_ptr, init_ptr, xbase, sx_l, seq, start, rel - (WIDTH - 1) + k, length, ds, dmask, dim, WIDTH)
        tl.store(dw_ptr + (part * dim + ds) * WIDTH + k, tl.sum(dpre * xk, 0), mask=dmask)
    if db_ptr is not None:
        tl.store(db_ptr + part * dim + ds, tl.sum(dpre, 0), mask=dmask)


@triton.jit(do_not_specialize=("seqlen",))
def _conv_dinit_kernel(dout_ptr, dfinal_ptr, x_ptr, w_ptr, bias_ptr, init_ptr, cu_ptr, dinit_ptr, seqlen, dim,
                       sx_b, sx_l, WIDTH: tl.constexpr, SILU: tl.constexpr, BLOCK_W: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    """dinit (nseq, dim, WIDTH): the gradient of the extended input at positions -WIDTH..-1 of each sequence."""
    seq = tl.program_id(0)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < dim
    j = tl.arange(0, BLOCK_W)
    jmask = j < WIDTH
    seqs = seq + tl.zeros_like(j)
    if cu_ptr is None:
        xbase = seq.to(tl.int64) * sx_b
        dbase = seq.to(tl.int64) * seqlen * dim
        start = tl.zeros_like(j)
        length = seqlen + tl.zeros_like(j)
    else:
        xbase = 0
        dbase = 0
        start = tl.load(cu_ptr + seqs).to(tl.int32)
        length = tl.load(cu_ptr + seqs + 1).to(tl.int32) - start
    dv, _ = grad_x_ext(dout_ptr, dfinal_ptr, x_ptr, w_ptr, bias_ptr, init_ptr, xbase, sx_l, dbase, seqs, start,
                       j - WIDTH, jmask, length, ds, dmask, dim, WIDTH, SILU)
    offs = (seq.to(tl.int64) * dim + ds[None, :]) * WIDTH + j[:, None]
    tl.store(dinit_ptr + offs, dv.to(dinit_ptr.dtype.element_ty), mask=jmask[:, None] & dmask[None, :])


def _grid(seqlen: int, dim: int, batch: int) -> tuple[int, int, int]:
    return triton.cdiv(seqlen, BLOCK_L), triton.cdiv(dim, BLOCK_D), batch


def conv_fwd(x, weight, bias, initial_state, seq_idx, cu_seqlens, silu: bool, want_final: bool):
    """x (batch, seqlen, dim), channel stride 1; weight (dim, W), bias (dim,), initial_state (nseq, dim, W)
    contiguous; seq_idx (seqlen,) int32 sequence of each packed row, with cu_seqlens (nseq + 1,), or both None.
    Returns (out (batch, seqlen, dim) in x.dtype, final state (nseq, dim, W) in x.dtype or None)."""
    batch, seqlen, dim = x.shape
    width = weight.shape[1]
    out = torch.empty(batch, seqlen, dim, device=x.device, dtype=x.dtype)
    if batch * seqlen * dim > 0:
        _conv_fwd_kernel[_grid(seqlen, dim, batch)](x, weight, bias, initial_state, seq_idx, cu_seqlens, out, seqlen,
                                                    dim, x.stride(0), x.stride(1), WIDTH=width, SILU=silu,
                                                    BLOCK_L=BLOCK_L, BLOCK_D=BLOCK_D, num_warps=4)
    final = None
    if want_final:
        nseq = batch if cu_seqlens is None else cu_seqlens.numel() - 1
        final = torch.empty(nseq, dim, width, device=x.device, dtype=x.dtype)
        if nseq * dim > 0:
            _conv_final_state_kernel[(nseq, triton.cdiv(dim, BLOCK_D))](
                x, initial_state, cu_seqlens, final, seqlen, dim, x.stride(0), x.stride(1), WIDTH=width,
                BLOCK_W=triton.next_power_of_2(width), BLOCK_D=BLOCK_D, num_warps=4)
    return out, final


def conv_bwd(dout, dfinal, x, weight, bias, initial_state, seq_idx, cu_seqlens, silu: bool):
    """dout (batch, seqlen, dim) and dfinal (nseq, dim, W) contiguous (dfinal may be None); the rest as in
    conv_fwd. Returns (dx like x, dweight like weight, dbias like bias or None, dinit like initial_state or None)."""
    batch, seqlen, dim = x.shape
    width = weight.shape[1]
    grid = _grid(seqlen, dim, batch)
    dx = torch.empty(batch, seqlen, dim, device=x.device, dtype=x.dtype)
    dw = torch.zeros(batch * grid[0], dim, width, device=x.device, dtype=torch.float32)
    db = None if bias is None else torch.zeros(batch * grid[0], dim, device=x.device, dtype=torch.float32)
    if batch * seqlen * dim > 0:
        _conv_bwd_kernel[grid](dout, dfinal, x, weight, bias, initial_state, seq_idx, cu_seqlens, dx, dw, db, seqlen,
                               dim, x.stride(0), x.stride(1), WIDTH=width, SILU=silu, BLOCK_L=BLOCK_L,
                               BLOCK_D=BLOCK_D, num_warps=4)
    dinit = None
    if initial_state is not None:
        dinit = torch.empty_like(initial_state)
        nseq = initial_state.shape[0]
        if nseq * dim > 0:
            _conv_dinit_kernel[(nseq, triton.cdiv(dim, BLOCK_D))](
                dout, dfinal, x, weight, bias, initial_state, cu_seqlens, dinit, seqlen, dim, x.stride(0),
                x.stride(1), WIDTH=width, SILU=silu, BLOCK_W=triton.next_power_of_2(width), BLOCK_D=BLOCK_D,
                num_warps=4)
    dbias = None if db is None else db.sum(0).to(bias.dtype)
    return dx, dw.sum(0).to(weight.dtype), dbias, dinit
