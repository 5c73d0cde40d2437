"""Attention through torch's fused scaled_dot_product_attention (flash / memory-efficient / math kernels).

Same contract as `attention_ref`; SDPA's own is_causal aligns queries to the top left, so any case other
than a plain square causal mask gets the explicit bool mask from `attention_mask`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.ops.attention.reference import attention_mask

_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
SDPA_HAS_GQA = _TORCH_VERSION >= (2, 5)  # enable_gqa= arrived in torch 2.5


def attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
    q_offset: int | torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """q (batch, q_len, nheads, headdim), k, v (batch, kv_len, nkv_heads, headdim) -> (batch, q_len, nheads,
    headdim). Queries with no key to attend to get zeros, as in `attention_ref`."""
    batch, q_len, nheads, _ = q.shape
    kv_len, nkv_heads = k.shape[1], k.shape[2]
    square_causal = causal and q_len == kv_len and key_padding_mask is None and (
        q_offset is None or (isinstance(q_offset, int) and q_offset == 0)
    )
    allowed = None
    if not square_causal:
        allowed = attention_mask(batch, q_len, kv_len, causal, q_offset, key_padding_mask, q.device)
    kwargs = {}
    if nheads != nkv_heads:
        if SDPA_HAS_GQA:
            kwargs["enable_gqa"] = True
        else:
            k = k.repeat_interleave(nheads // nkv_heads, dim=2)
            v = v.repeat_interleave(nheads // nkv_heads, dim=2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),  # (B, nh, T, hd)
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=None if allowed is None else allowed[:, None],  # (B, 1, T, S), broadcast over heads
        is_causal=square_causal,
        scale=scale,
        **kwargs,
    ).transpose(1, 2)  # (B, T, nh, hd)
    if allowed is not None:
        # Backends differ on rows with every key masked (NaN or zeros); pin them to zeros like the reference.
        out = torch.where(allowed.any(-1)[:, :, None, None], out, 0.0)
    return out
