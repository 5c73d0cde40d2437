"""Packed variable-length sequences: `cu_seqlens` (nseq + 1,) marks where each sequence starts in one row.

Sequence k occupies positions cu_seqlens[k] .. cu_seqlens[k+1]-1; empty sequences are allowed.
"""

from __future__ import annotations

import torch


def check_cu_seqlens(cu_seqlens, seqlen: int, batch: int) -> None:
    """Raises ValueError naming cu_seqlens when it cannot describe a packing of one row of `seqlen` tokens."""
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.ndim != 1 or cu_seqlens.is_floating_point():
        got = f"{cu_seqlens.dtype} shape {tuple(cu_seqlens.shape)}" if isinstance(cu_seqlens, torch.Tensor) \
            else type(cu_seqlens).__name__
        raise ValueError(f"cu_seqlens: expected a 1-D integer tensor, got {got}")
    if batch != 1:
        raise ValueError(f"cu_seqlens: packed sequences need batch == 1, got batch {batch}")
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens: expected at least 2 entries (0 and seqlen), got {cu_seqlens.tolist()}")
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != seqlen:
        raise ValueError(f"cu_seqlens: expected to start at 0 and end at seqlen={seqlen}, got {cu[0]} .. {cu[-1]}")
    if any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens: expected non-decreasing offsets, got {cu}")


def sequence_ids(cu_seqlens, seqlen: int) -> torch.Tensor:
    """(seqlen,) int64: the index of the sequence each position belongs to."""
    pos = torch.arange(seqlen, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:].to(torch.int64), pos, right=True)
