"""Packed sequences: rows that hold several documents, with cu_seqlens marking where each starts, run so that no
state (SSM state, conv window, attention) crosses a document boundary.

The batch is flattened into one packed row (batch 1, as ssmkit.ops.ssd expects) and given to the model's
`forward(..., cu_seqlens=)`; LanguageModel.forward restarts every mixer at each document.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


def cu_seqlens_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """segment_ids (batch, seqlen), non-decreasing along each row -> cu_seqlens (nseq + 1,) int32 over the
    flattened batch * seqlen positions: a sequence ends where the segment id changes or a row ends."""
    batch, seqlen = segment_ids.shape
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    idx = torch.nonzero(starts.reshape(-1), as_tuple=False)[:, 0]
    end = torch.tensor([batch * seqlen], device=idx.device)
    return torch.cat([idx, end]).to(torch.int32)


def unwrap(model: nn.Module) -> nn.Module:
    """The LanguageModel inside a DistributedDataParallel (or any wrapper with `.module`)."""
    return getattr(model, "module", model)


def supports_cu_seqlens(model: nn.Module) -> bool:
    return "cu_seqlens" in inspect.signature(unwrap(model).forward).parameters


def packed_forward(model: nn.Module, input_ids: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Logits (batch, seqlen, vocab) of input_ids (batch, seqlen) where cu_seqlens (nseq + 1,) splits the
    flattened batch * seqlen tokens into independent sequences (from cu_seqlens_from_segments)."""
    if not supports_cu_seqlens(model):
        raise ValueError(f"model: expected a forward that takes cu_seqlens (a LanguageModel), got "
                         f"{type(unwrap(model)).__name__}")
    batch, seqlen = input_ids.shape
    return model(input_ids.reshape(1, -1), cu_seqlens=cu_seqlens).reshape(batch, seqlen, -1)


def model_logits(model: nn.Module, input_ids: torch.Tensor, segment_ids: torch.Tensor | None) -> torch.Tensor:
    """Logits (batch, seqlen, vocab): with segment_ids, each document starts from a fresh state."""
    if segment_ids is None:
        return model(input_ids)
    return packed_forward(model, input_ids, cu_seqlens_from_segments(segment_ids))
