"""Triton attention for one decode token over a static KV cache (split-K "flash-decoding"), for the CUDA-graph
decode step of the attention layers.

Glossary: q = the new token's queries (batch, nheads, headdim), RoPE applied; k_cache, v_cache = the whole
preallocated cache (batch, max_len, nkv_heads, headdim); position[b] = the cache index of row b's new token.
The result equals `attention(q[:, None], k_cache, v_cache, causal=False, key_padding_mask=allowed)[:, 0]` with
allowed[b, j] = (j <= position[b]) & key_mask[b, j].
"""

from __future__ import annotations

import torch

from ssmkit.ops.dispatch import check_triton_device
from ssmkit.ops.validate import check_bool_mask, check_position, check_same_device, check_tensor

from .decode import decode_attention_fwd

__all__ = ["decode_attention_triton"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SUPPORTED_HEADDIMS = (32, 64, 128, 256)


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    position: torch.Tensor,
    key_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q K^T * scale + mask) V for one query per row over every cache position, masked on the device.

    Args:
        q: (batch, nheads, headdim), float32/float16/bfloat16; headdim in {32, 64, 128, 256}.
        k_cache, v_cache: (batch, max_len, nkv_heads, headdim) in q.dtype, any strides with a unit last stride
            (read in place). nheads % nkv_heads == 0; query head h reads kv head h // (nheads // nkv_heads).
        position: (1,) or (batch,) int64 on q's device: row b attends to keys j <= position[b] (position[0] for
            every row when (1,)). Never read on the host, so the call can be captured in a CUDA graph.
        key_mask: (batch, max_len) bool, True = may attend (e.g. not left padding), or None.
        scale: default headdim ** -0.5.
    Returns:
        (batch, nheads, headdim) in q.dtype; softmax statistics and products accumulate in float32. A row with
        no allowed key gets zeros, as in `attention_ref`.
    Raises:
        ValueError naming the argument for bad shapes, dtypes or devices, and for a headdim the kernel does not
        tile (the caller falls back to SDPA).
    """
    _check_inputs(q, k_cache, v_cache, position, key_mask)
    check_triton_device(q)
    if q.stride(-1) != 1:
        q = q.contiguous()
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return decode_attention_fwd(q, k_cache, v_cache, position, key_mask, scale)


def _check_inputs(q, k_cache, v_cache, position, key_mask) -> None:
    check_tensor("q", q, ndim=3)
    batch, nheads, headdim = q.shape
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q: expected float32, float16 or bfloat16, got {q.dtype}")
    if headdim not in SUPPORTED_HEADDIMS:
        raise ValueError(f"q: headdim must be one of {SUPPORTED_HEADDIMS} for the Triton decode kernel, got "
                         f"{headdim} (use attention(..., impl='sdpa') instead)")
    check_tensor("k_cache", k_cache, ndim=4)
    max_len, nkv_heads = k_cache.shape[1], k_cache.shape[2]
    check_tensor("k_cache", k_cache, shape=(batch, None, None, headdim))
    if max_len < 1 or nkv_heads < 1 or nheads % nkv_heads != 0:
        raise ValueError(f"k_cache: expected max_len >= 1 and nkv_heads dividing nheads={nheads}, got shape "
                         f"{tuple(k_cache.shape)}")
    check_tensor("v_cache", v_cache, shape=tuple(k_cache.shape))
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name}: expected the dtype of q ({q.dtype}), got {t.dtype}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: expected a unit stride along headdim (read in place), got strides "
                             f"{t.stride()}")
    check_position("position", position, batch)
    if key_mask is not None:
        check_bool_mask("key_mask", key_mask, (batch, max_len))
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, position=position, key_mask=key_mask)
