"""Softmax attention for the attention layers of Transformer++ and hybrid models, with KV cache and RoPE.

Glossary: q, k, v = queries, keys, values (batch, seqlen, heads, headdim); nkv_heads < nheads is grouped-query
attention (GQA); q_offset = absolute position of the first query in the key sequence.
"""

from __future__ import annotations

import torch

from ssmkit.ops.attention.kv_cache import KVCache, dequantize_int8, quantize_int8
from ssmkit.ops.attention.reference import attention_mask, attention_ref
from ssmkit.ops.attention.rotary import apply_rotary, rotary_cos_sin, rotary_table
from ssmkit.ops.attention.sdpa import attention_sdpa
from ssmkit.ops.validate import check_bool_mask, check_impl, check_position, check_same_device, check_tensor

__all__ = [
    "attention",
    "decode_attention",
    "rope_and_cache",
    "attention_ref",
    "attention_sdpa",
    "attention_mask",
    "KVCache",
    "quantize_int8",
    "dequantize_int8",
    "apply_rotary",
    "rotary_cos_sin",
    "rotary_table",
]

IMPLS = {"reference": attention_ref, "sdpa": attention_sdpa}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    q_offset: int | torch.Tensor | None = None,
    key_padding_mask: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """softmax(Q K^T * scale + mask) V.

    Args:
        q: (batch, q_len, nheads, headdim). k, v: (batch, kv_len, nkv_heads, headdim), nheads % nkv_heads == 0;
            query head h reads kv head h // (nheads // nkv_heads).
        causal: query i sits at position q_offset + i of the key sequence and sees keys up to there.
        scale: default 1 / sqrt(headdim).
        q_offset: int or (batch,) int tensor; default kv_len - q_len (the queries are the last q_len
            positions, as in decode over a KV cache). Ignored when causal=False.
        key_padding_mask: (batch, kv_len) bool, True = keep (e.g. left-padded prompts).
        impl: "auto" (= "sdpa") | "sdpa" | "reference".
    Returns:
        (batch, q_len, nheads, headdim). Queries that may attend to no key (padding) get zeros.
    """
    check_impl(impl, ("auto", *IMPLS))
    check_tensor("q", q, ndim=4)
    batch, q_len, nheads, headdim = q.shape
    check_tensor("k", k, ndim=4)
    kv_len, nkv_heads = k.shape[1], k.shape[2]
    if k.shape[0] != batch:
        raise ValueError(f"k: expected batch {batch} (q.shape[0]), got shape {tuple(k.shape)}")
    if k.shape[3] != headdim:
        raise ValueError(f"k: expected headdim {headdim} (q.shape[-1]), got shape {tuple(k.shape)}")
    if nheads % nkv_heads != 0:
        raise ValueError(f"k: nheads={nheads} must be a multiple of nkv_heads={nkv_heads} (k.shape[2])")
    check_tensor("v", v, shape=tuple(k.shape))
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype != q.dtype or not t.is_floating_point():
            raise ValueError(f"{name}: expected the floating dtype of q ({q.dtype}), got {t.dtype}")
    if key_padding_mask is not None:
        check_bool_mask("key_padding_mask", key_padding_mask, (batch, kv_len))
    _check_q_offset(q_offset, batch, q_len, kv_len)
    offset_tensor = q_offset if isinstance(q_offset, torch.Tensor) else None
    check_same_device(q=q, k=k, v=v, key_padding_mask=key_padding_mask, q_offset=offset_tensor)
    fn = IMPLS["sdpa" if impl == "auto" else impl]
    return fn(q, k, v, causal, scale, q_offset if causal else None, key_padding_mask)


DECODE_IMPLS = ("auto", "triton", "sdpa", "reference")


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor, *,
                     key_mask: torch.Tensor | None = None, scale: float | None = None,
                     impl: str = "auto") -> torch.Tensor:
    """One new query per row over a whole static KV cache, the causal limit applied on the device: row b attends
    to the positions j <= position[b] where key_mask[b, j] (a CUDA-graph decode step's attention).

    Args:
        q: (batch, nheads, headdim). k_cache, v_cache: (batch, max_len, nkv_heads, headdim) in q's dtype.
        position: (1,) or (batch,) int64 on q's device (never read on the host). key_mask: (batch, max_len)
            bool or None. scale: default headdim ** -0.5.
        impl: "auto" (the split-K Triton kernel, ssmkit.ops.attention.triton, on CUDA where it takes the
            inputs, else "sdpa"), "triton", "sdpa" or "reference" (the last two: `attention` under the mask).
    Returns:
        (batch, nheads, headdim); a row with no allowed key gets zeros.
    """
    check_impl(impl, DECODE_IMPLS)
    if impl in ("auto", "triton"):
        kernel = _decode_kernel(q, k_cache, impl)
        if kernel is not None:
            return kernel(q, k_cache, v_cache, position, key_mask, scale)
    check_tensor("q", q, ndim=3)
    check_tensor("position", position, ndim=1)
    max_len = k_cache.shape[1]
    allowed = torch.arange(max_len, device=q.device)[None, :] <= position.view(-1, 1)
    allowed = allowed.expand(q.shape[0], max_len) if key_mask is None else allowed & key_mask
    out = attention(q[:, None], k_cache, v_cache, causal=False, scale=scale, key_padding_mask=allowed,
                    impl="sdpa" if impl in ("auto", "triton") else impl)
    return out[:, 0]


def _decode_kernel(q: torch.Tensor, k_cache: torch.Tensor, impl: str):
    """decode_attention_triton when impl="triton", or for "auto" on CUDA with inputs it tiles; else None."""
    from ssmkit.ops.dispatch import triton_module_available

    available = triton_module_available("ssmkit.ops.attention")
    if impl == "auto" and not (q.is_cuda and available):
        return None
    if not available:
        raise ValueError("impl: 'triton' is not available (needs the triton package)")
    from ssmkit.ops.attention.triton import SUPPORTED_DTYPES, SUPPORTED_HEADDIMS, decode_attention_triton

    if impl == "auto" and not (q.dtype in SUPPORTED_DTYPES and q.ndim == 3 and q.shape[-1] in SUPPORTED_HEADDIMS
                               and isinstance(k_cache, torch.Tensor) and k_cache.dtype == q.dtype
                               and k_cache.stride(-1) == 1):
        return None
    return decode_attention_triton


def rope_and_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, position: torch.Tensor,
                   k_cache: torch.Tensor, v_cache: torch.Tensor, *, cos_sin: torch.Tensor | None = None,
                   key_mask: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
    """The new token's RoPE and KV-cache write of a static decode step: rotates q and k by the angles of their
    position, writes k and v into the caches there and sets key_mask there; returns q rotated.

    Args:
        q: (batch, nheads, headdim); k, v: (batch, nkv_heads, headdim), the projections of the new token.
        position: (1,) or (batch,) int64 on q's device, the cache index of each row's token (< max_len; not
            checked, reading it would synchronize the host).
        k_cache, v_cache: (batch, max_len, nkv_heads, headdim), written in place (not an int8 cache).
        cos_sin: (2, >= max_len, rotary_dim) from `rotary_table`, or None (no RoPE: q and k pass unrotated).
        key_mask: (batch, max_len) bool, set True at each row's position, or None.
        impl: "auto" (one Triton launch on CUDA where it takes the inputs once ROPE_KERNEL_AUTO is set, else
            "reference"), "triton", "reference" (apply_rotary and index_put, op by op).
    Returns:
        (batch, nheads, headdim) in q's dtype; the reference's numbers within a rounding
        (on a GPU the kernel contracts the rotation's products into its sum).
    """
    check_impl(impl, ("auto", "triton", "reference"))
    check_tensor("q", q, ndim=3)
    batch, nheads, headdim = q.shape
    check_tensor("k", k, ndim=3)
    check_tensor("k", k, shape=(batch, None, headdim))
    check_tensor("v", v, shape=tuple(k.shape))
    check_tensor("k_cache", k_cache, ndim=4)
    check_tensor("k_cache", k_cache, shape=(batch, None, k.shape[1], headdim))
    check_tensor("v_cache", v_cache, shape=tuple(k_cache.shape))
    if cos_sin is not None:
        check_tensor("cos_sin", cos_sin, ndim=3)
        if cos_sin.shape[0] != 2 or cos_sin.shape[2] > headdim or cos_sin.shape[2] % 2:
            raise ValueError(f"cos_sin: expected (2, >= max_len, even rotary_dim <= {headdim}), got "
                             f"{tuple(cos_sin.shape)}")
    if key_mask is not None:
        check_bool_mask("key_mask", key_mask, (batch, k_cache.shape[1]))
    check_position("position", position, batch)
    check_same_device(q=q, k=k, v=v, position=position, k_cache=k_cache, v_cache=v_cache, cos_sin=cos_sin,
                      key_mask=key_mask)
    if impl == "triton" or (impl == "auto" and _rope_kernel_takes(q, k_cache, v_cache, cos_sin)):
        from ssmkit.ops.dispatch import check_triton_device
        from ssmkit.ops.attention.triton.rope_cache import rope_cache_write

        check_triton_device(q)
        return rope_cache_write(q, k, v, cos_sin, position, k_cache, v_cache, key_mask)
    return rope_and_cache_ref(q, k, v, position, k_cache, v_cache, cos_sin, key_mask)


def rope_and_cache_ref(q, k, v, position, k_cache, v_cache, cos_sin, key_mask) -> torch.Tensor:
    """`rope_and_cache` in torch: apply_rotary on (batch, 1, heads, headdim) views, index_put into the caches."""
    batch = q.shape[0]
    pos = position.view(-1, 1)
    q4, k4 = q[:, None], k[:, None]
    if cos_sin is not None:
        cs = cos_sin[:, pos]  # (2, 1 or batch, 1, rotary_dim)
        q4, k4 = apply_rotary(q4, cs[0], cs[1]), apply_rotary(k4, cs[0], cs[1])
    index = (torch.arange(batch, device=q.device), position.expand(batch))
    k_cache[index] = k4[:, 0].to(k_cache.dtype)
    v_cache[index] = v.to(v_cache.dtype)
    if key_mask is not None:
        key_mask.scatter_(1, pos.expand(batch, 1), True)
    return q4[:, 0]


# impl="auto" takes the RoPE + KV-write kernel on CUDA: its gpu-marked tests passed on an H100 on 2026-11-25.
ROPE_KERNEL_AUTO = True


def _rope_kernel_takes(q, k_cache, v_cache, cos_sin) -> bool:
    """Whether impl="auto" runs the Triton kernel: selectable, CUDA, one floating dtype throughout, heads of
    <= 256 channels."""
    from ssmkit.ops.dispatch import triton_module_available

    same = k_cache.dtype == v_cache.dtype == q.dtype and (cos_sin is None or cos_sin.dtype == q.dtype)
    return (ROPE_KERNEL_AUTO and q.is_cuda and same and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and q.shape[-1] <= 256 and triton_module_available("ssmkit.ops.attention"))


def _check_q_offset(q_offset, batch: int, q_len: int, kv_len: int) -> None:
    if q_offset is None:
        return
    if isinstance(q_offset, torch.Tensor):
        if q_offset.dtype not in (torch.int32, torch.int64) or tuple(q_offset.shape) != (batch,):
            raise ValueError(
                f"q_offset: expected an int or an int tensor of shape ({batch},), "
                f"got {q_offset.dtype} shape {tuple(q_offset.shape)}"
            )
        return  # values are not read here: that would synchronize with the device on every decode step
    if isinstance(q_offset, bool) or not isinstance(q_offset, int) or not 0 <= q_offset <= kv_len - q_len:
        raise ValueError(f"q_offset: expected an int in [0, kv_len - q_len = {kv_len - q_len}], got {q_offset!r}")
