"""The conv1d decode step in Triton: roll the conv state left by one in place, write the new input last, apply
the filter (and SiLU). One launch, no host synchronisation: it can be captured in a CUDA graph.

Version history
- v1: one program per (batch row, block of channels); the shifted state is read straight from memory
  (columns 1..W-1) before a barrier and written back after it, so no program reads what it already wrote.
- v2: launched with programmatic dependent launch on Hopper (ssmkit.ops.pdl): waits for the launch before it
  first thing, and lets the next one start.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmkit.ops.pdl import pdl_options, wait_for_previous

BLOCK_D = 128


@triton.jit
def _conv_step_kernel(state_ptr, x_ptr, w_ptr, bias_ptr, out_ptr, dim, s_b, s_d, s_w, sx_b,
                      WIDTH: tl.constexpr, SILU: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr,
                      PDL: tl.constexpr):
    """state (batch, dim, WIDTH) any strides; x (batch, dim) unit channel stride; out (batch, dim) contiguous."""
    wait_for_previous(PDL)  # ssmkit.ops.pdl
    b = tl.program_id(0)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < dim
    j = tl.arange(0, BLOCK_W)
    base = state_ptr + b.to(tl.int64) * s_b + ds[:, None] * s_d
    shifted = tl.load(base + (j[None, :] + 1) * s_w, mask=dmask[:, None] & (j[None, :] + 1 < WIDTH), other=0.0)
    xv = tl.load(x_ptr + b.to(tl.int64) * sx_b + ds, mask=dmask, other=0.0)
    new = tl.where(j[None, :] == WIDTH - 1, xv.to(state_ptr.dtype.element_ty)[:, None], shifted)
    tl.debug_barrier()
    tl.store(base + j[None, :] * s_w, new, mask=dmask[:, None] & (j[None, :] < WIDTH))
    w = tl.load(w_ptr + ds[:, None] * WIDTH + j[None, :], mask=dmask[:, None] & (j[None, :] < WIDTH), other=0.0)
    out = tl.sum(new.to(tl.float32) * w.to(tl.float32), 1)
    if bias_ptr is not None:
        out += tl.load(bias_ptr + ds, mask=dmask, other=0.0).to(tl.float32)
    if SILU:
        out = out * tl.sigmoid(out)
    tl.store(out_ptr + b * dim + ds, out.to(out_ptr.dtype.element_ty), mask=dmask)


def conv_step(conv_state, x, weight, bias, silu: bool):
    """conv_state (batch, dim, W) updated in place; x (batch, dim); weight (dim, W) contiguous; bias (dim,).
    Returns out (batch, dim) in x.dtype."""
    batch, dim, width = conv_state.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    if batch * dim > 0:
        grid = (batch, triton.cdiv(dim, BLOCK_D))
        _conv_step_kernel[grid](conv_state, x, weight, bias, out, dim, *conv_state.stride(), x.stride(0),
                                WIDTH=width, SILU=silu, BLOCK_W=triton.next_power_of_2(width), BLOCK_D=BLOCK_D,
                                num_warps=4, **pdl_options(x.device))
    return out
