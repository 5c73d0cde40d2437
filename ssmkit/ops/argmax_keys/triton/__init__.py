"""The greedy feedback from argmax keys as one Triton launch, the `impl="triton"` of ssmkit.ops.argmax_keys, and
the device-side packing of a key that the one-row GEMV's argmax epilogue uses (ssmkit.ops.norm.triton.linear).

Version history
- v1: one program for every row: tokens, the history's column (read from the device counter), the keys set back
  to EMPTY_KEY and the counter advanced, replacing torch's argmax, copy, index_copy and add (four launches of a
  few microseconds after the LM head in each greedy step). Programmatic dependent launch on Hopper
  (ssmkit.ops.pdl): nothing is read before the wait for the LM head's launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmkit.ops.dispatch import check_triton_device
from ssmkit.ops.pdl import pdl_options, wait_for_previous

from ..reference import EMPTY_KEY, INDEX_MASK

__all__ = ["feed_back_keys_triton", "packed_keys", "empty_keys"]

# impl="auto" takes the kernel on CUDA. Set before its gpu-marked tests (tests/ops/argmax_keys,
# tests/inference/test_greedy_graph.py) ran on a GPU: they were written beside it on a CPU-only machine.
AUTO_SELECTABLE = True

_EMPTY_KEY: tl.constexpr = tl.constexpr(EMPTY_KEY)  # a jit function reads globals only as constexprs
_INDEX_MASK: tl.constexpr = tl.constexpr(INDEX_MASK)


@triton.jit
def packed_keys(v, ns, mask):
    """v (..., BLOCK_N) float32 values of features ns -> int64 keys as ssmkit.ops.argmax_keys.argmax_keys packs
    them; EMPTY_KEY where mask is False."""
    bits = tl.where(v == 0, 0.0, v).to(tl.int32, bitcast=True)  # -0.0 == +0.0
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)
    key = (ordered << 32) | (_INDEX_MASK - ns.to(tl.int64))
    return tl.where(mask, key, _EMPTY_KEY)


@triton.jit
def empty_keys(BLOCK: tl.constexpr):
    """(BLOCK,) int64 of EMPTY_KEY: no key seen yet."""
    return tl.full((BLOCK,), _EMPTY_KEY, tl.int64)


@triton.jit
def _feed_back_kernel(keys_ptr, tokens_ptr, history_ptr, index_ptr, batch, s_hist, BLOCK_B: tl.constexpr,
                      PDL: tl.constexpr):
    """keys, tokens (batch,) int64; history (batch, columns) int64 with row stride s_hist; index (1,) int64."""
    wait_for_previous(PDL)  # ssmkit.ops.pdl
    rows = tl.arange(0, BLOCK_B)
    rmask = rows < batch
    col = tl.load(index_ptr)
    chosen = _INDEX_MASK - (tl.load(keys_ptr + rows, mask=rmask, other=0) & _INDEX_MASK)
    tl.store(tokens_ptr + rows, chosen, mask=rmask)
    tl.store(history_ptr + rows.to(tl.int64) * s_hist + col, chosen, mask=rmask)
    tl.store(keys_ptr + rows, empty_keys(BLOCK_B), mask=rmask)
    tl.debug_barrier()  # every thread has read the column before one writes the next
    tl.store(index_ptr, col + 1)


def feed_back_keys_triton(keys: torch.Tensor, tokens: torch.Tensor, history: torch.Tensor,
                          index: torch.Tensor) -> None:
    """feed_back_keys_ref's arguments and effect, in one launch: history's column stride must be 1."""
    check_triton_device(keys)
    batch = keys.shape[0]
    _feed_back_kernel[(1,)](keys, tokens, history, index, batch, history.stride(0),
                            BLOCK_B=triton.next_power_of_2(batch), num_warps=1 if batch <= 32 else 4,
                            **pdl_options(keys.device))
