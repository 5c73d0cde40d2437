"""Argmax keys in plain PyTorch: the spec of the packed keys the one-row GEMV's epilogue (ssmkit.ops.norm.triton.
linear) folds in with atomic maxima, and of the greedy feedback that consumes them.

A key packs one logit and its index into an int64 whose order is (value, then smaller index first):
key = ordered(float32(v)) * 2^32 + (2^32 - 1 - index), where ordered(bits) = bits if bits >= 0 else
bits ^ 0x7FFFFFFF on the float's bits as an int32 (the float order on the integers), -0.0 taken as +0.0. The
largest key of a row is then torch.argmax's first maximal index for every row without NaN.
"""

from __future__ import annotations

import torch

EMPTY_KEY = -2 ** 63  # INT64_MIN: below every key (no logit seen yet); what a key buffer holds before a step
INDEX_MASK = 2 ** 32 - 1


def argmax_keys(logits: torch.Tensor) -> torch.Tensor:
    """logits (M, N) float, N < 2^32 - 1 -> (M,) int64: each row's largest packed key.

    NaN ranks by its bits: one with the sign bit clear above +inf, one with it set below -inf (torch.argmax
    returns the first NaN, whatever its sign); equal NaNs of different payloads rank by payload. Values rank by
    their float32 rounding: float64 logits equal after it take the first index (the kernels never see float64).
    """
    v = logits.float()
    v = torch.where(v == 0, torch.zeros_like(v), v)  # -0.0 == +0.0, as torch.argmax compares them
    bits = v.view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    index = torch.arange(logits.shape[-1], device=logits.device, dtype=torch.int64)
    return (ordered * 2 ** 32 + (INDEX_MASK - index)).amax(dim=-1)


def key_index(keys: torch.Tensor) -> torch.Tensor:
    """keys (...) int64 -> the feature index each packs, int64 (meaningless for EMPTY_KEY)."""
    return INDEX_MASK - (keys & INDEX_MASK)


def fold_argmax_keys(keys: torch.Tensor, logits: torch.Tensor) -> None:
    """keys (M,) int64 <- max(keys, argmax_keys(logits (M, N))), in place: what the epilogue's atomic maxima leave
    after one launch over logits."""
    torch.maximum(keys, argmax_keys(logits), out=keys)


def feed_back_keys_ref(keys: torch.Tensor, tokens: torch.Tensor, history: torch.Tensor,
                       index: torch.Tensor) -> None:
    """Greedy feedback from keys (batch,) int64: the packed indices become tokens (batch,) int64 and
    history (batch, columns)[:, index] (index (1,) int64, then advanced by one); keys are set back to EMPTY_KEY
    for the next step. No host read, so a CUDA graph can hold it."""
    chosen = key_index(keys)
    tokens.copy_(chosen)
    history.index_copy_(1, index, chosen.unsqueeze(1))
    keys.fill_(EMPTY_KEY)
    index.add_(1)
