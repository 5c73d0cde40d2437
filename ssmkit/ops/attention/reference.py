"""Scaled dot-product attention written out (spec): softmax(Q K^T * scale + mask) V, with grouped KV heads.

Causal masking places the queries at absolute positions q_offset .. q_offset + q_len - 1 of the key sequence
(by default its last q_len positions), so one function serves prefill and decode over a KV cache.
"""

from __future__ import annotations

import torch


def attention_mask(
    batch: int,
    q_len: int,
    kv_len: int,
    causal: bool,
    q_offset: int | torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Which keys each query may attend to: bool (batch, q_len, kv_len), True = attend; None = all of them.

    Query i of row b sits at position q_offset[b] + i and sees keys 0 .. q_offset[b] + i (when causal) that
    key_padding_mask (batch, kv_len) keeps.
    """
    allowed = None
    if causal:
        offset = kv_len - q_len if q_offset is None else q_offset
        offset = torch.as_tensor(offset, device=device).reshape(-1, 1, 1)  # (batch or 1, 1, 1)
        q_pos = offset + torch.arange(q_len, device=device).reshape(1, q_len, 1)
        k_pos = torch.arange(kv_len, device=device).reshape(1, 1, kv_len)
        allowed = (k_pos <= q_pos).expand(batch, q_len, kv_len)
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, :]  # (batch, 1, kv_len)
        allowed = keep.expand(batch, q_len, kv_len) if allowed is None else allowed & keep
    return allowed


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
    q_offset: int | torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(Q K^T * scale + mask) V in the input dtype.

    Args:
        q: (batch, q_len, nheads, headdim). k, v: (batch, kv_len, nkv_heads, headdim); query head h reads
            kv head h // (nheads // nkv_heads) (grouped-query attention).
        causal, q_offset, key_padding_mask: see `attention_mask`. scale: default 1 / sqrt(headdim).
    Returns:
        (batch, q_len, nheads, headdim). A query with no key to attend to (a padded position) gets zeros.
    """
    batch, q_len, nheads, headdim = q.shape
    kv_len, nkv_heads = k.shape[1], k.shape[2]
    scale = headdim**-0.5 if scale is None else scale
    group = nheads // nkv_heads
    k = k.repeat_interleave(group, dim=2)  # (B, S, nh, hd)
    v = v.repeat_interleave(group, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale  # (B, nh, T, S)
    allowed = attention_mask(batch, q_len, kv_len, causal, q_offset, key_padding_mask, q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if allowed is not None:
        # A row with every key masked is all -inf, and softmax gives NaN there; such a query reads nothing.
        probs = probs.masked_fill(~allowed.any(-1)[:, None, :, None], 0.0)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v)
