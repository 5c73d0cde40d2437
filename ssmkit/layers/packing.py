"""Packed sequences in the mixers: one row (batch 1) holds several documents, `cu_seqlens` (nseq + 1,) marks where
each starts, and no state, conv window or attention crosses a boundary (ssmkit.ops.varlen has the layout).

SSM mixers hand cu_seqlens to their ops; attention restarts RoPE positions and attends within each document.
"""

from __future__ import annotations

import torch

from ssmkit.ops.varlen import check_cu_seqlens, sequence_ids


def check_packed(cu_seqlens, input_shape: tuple[int, int], state, key_padding_mask) -> torch.Tensor:
    """Checks cu_seqlens for a packed row of shape (batch, seqlen) and returns it as int64 without empty
    sequences (which hold no token and change nothing); raises ValueError naming the argument."""
    if state is not None:
        raise ValueError("cu_seqlens: packed sequences each start from a fresh state; pass either state (to "
                         "continue sequences) or cu_seqlens, not both")
    if key_padding_mask is not None:
        raise ValueError("cu_seqlens: packed rows have no padding; pass either key_padding_mask or cu_seqlens, "
                         "not both")
    batch, seqlen = input_shape
    check_cu_seqlens(cu_seqlens, seqlen, batch)
    return torch.unique_consecutive(cu_seqlens.to(torch.int64))


def positions_in_sequence(cu_seqlens: torch.Tensor, seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence index (seqlen,), position inside that sequence (seqlen,)), both int64, for a packed row."""
    seq = sequence_ids(cu_seqlens, seqlen)
    return seq, torch.arange(seqlen, device=cu_seqlens.device) - cu_seqlens.to(torch.int64)[seq]

