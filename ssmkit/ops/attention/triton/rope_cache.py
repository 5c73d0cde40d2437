"""The static decode step's RoPE and KV-cache write in one Triton launch.

Per new token: q and k rotated by the cos/sin of their position (rotate-half convention, the first rotary_dim
channels of each head), k and v written into the caches at that position, and the key mask set there. Unfused,
a CUDA-graph decode step spent about 25 small kernels per attention layer on this (a table gather, the rotations'
slices, negations, products, sums and concatenations, two index_put writes and a scatter), 1-3 us each on an H100.

The products are written as `apply_rotary` rounds them in 16-bit dtypes (x * cos and rotate_half(x) * sin each
rounded to the dtype, then their sum): the interpreter gives the torch path bit for bit. On an H100 (triton 3.6)
the compiler contracts the products into the sum, and about a quarter of bf16 elements differ from the torch path
in the last bit, each within the error bound of the three-rounding sum (tests/ops/attention/test_rope_cache.py).

Version history
- v1: grid (batch, nheads + 2 * nkv_heads): one program per row and head of q, k or v (a head is at most 256
  channels); the row's first program also sets the key mask. On an H100 (2026-11-25) a Transformer++ 125M
  graph decode step went from 364 to 172 kernels and 998 to 593 us (benchmarks/decode_profile.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_cache_kernel(q_ptr, k_ptr, v_ptr, table_ptr, pos_ptr, q_out_ptr, kc_ptr, vc_ptr, key_mask_ptr,
                       nheads, nkv_heads, headdim, rotary_dim, st_cs, st_l, sq_b, sq_h, sk_b, sk_h, sv_b, sv_h,
                       skc_b, skc_l, skc_h, svc_b, svc_l, svc_h, smask_b, spos,
                       HAS_ROPE: tl.constexpr, BLOCK_D: tl.constexpr):
    """q (batch, nheads, headdim), k, v (batch, nkv_heads, headdim) with unit last stride; table (2, >= max_len,
    rotary_dim), cos then sin, strides (st_cs, st_l, 1); pos (1 or batch,) int64, read with stride spos (0 =
    shared); q_out (batch, nheads, headdim) contiguous; caches (batch, max_len, nkv_heads, headdim) strided;
    key_mask (batch, max_len) as uint8, or None."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pos = tl.load(pos_ptr + b * spos)
    d = tl.arange(0, BLOCK_D)
    dmask = d < headdim
    if h < nheads + nkv_heads:  # q or k: rotate
        if h < nheads:
            src = q_ptr + b * sq_b + h * sq_h
            dst = q_out_ptr + (b * nheads + h) * headdim
        else:
            src = k_ptr + b * sk_b + (h - nheads) * sk_h
            dst = kc_ptr + b * skc_b + pos * skc_l + (h - nheads) * skc_h
        x = tl.load(src + d, mask=dmask, other=0.0)
        out = x
        if HAS_ROPE:
            half = rotary_dim // 2
            rmask = d < rotary_dim
            partner = tl.where(d < half, d + half, d - half)
            xp = tl.load(src + partner, mask=rmask, other=0.0)
            rot = tl.where(d < half, -xp, xp)  # rotate_half: (-x2, x1)
            cos = tl.load(table_ptr + pos * st_l + d, mask=rmask, other=0.0)
            sin = tl.load(table_ptr + st_cs + pos * st_l + d, mask=rmask, other=0.0)
            dt = x.dtype
            a = (x.to(tl.float32) * cos.to(tl.float32)).to(dt)
            c = (rot.to(tl.float32) * sin.to(tl.float32)).to(dt)
            out = tl.where(rmask, (a.to(tl.float32) + c.to(tl.float32)).to(dt), x)
        tl.store(dst + d, out.to(dst.dtype.element_ty), mask=dmask)
    else:  # v: copy into the cache
        hv = h - nheads - nkv_heads
        x = tl.load(v_ptr + b * sv_b + hv * sv_h + d, mask=dmask, other=0.0)
        tl.store(vc_ptr + b * svc_b + pos * svc_l + hv * svc_h + d, x.to(vc_ptr.dtype.element_ty), mask=dmask)
    if key_mask_ptr is not None:
        if h == 0:
            tl.store(key_mask_ptr + b * smask_b + pos, 1)


def rope_cache_write(q, k, v, table, position, k_cache, v_cache, key_mask):
    """Launches the kernel; arguments as `ssmkit.ops.attention.rope_and_cache`, already checked. Returns q
    rotated, (batch, nheads, headdim) contiguous."""
    batch, nheads, headdim = q.shape
    nkv_heads = k.shape[1]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    q_out = torch.empty(batch, nheads, headdim, dtype=q.dtype, device=q.device)
    rotary_dim = 0 if table is None else table.shape[-1]
    if table is not None and table.stride(-1) != 1:
        table = table.contiguous()
    st_cs, st_l = (0, 0) if table is None else (table.stride(0), table.stride(1))
    mask = None if key_mask is None else key_mask.view(torch.uint8)
    grid = (batch, nheads + 2 * nkv_heads)
    _rope_cache_kernel[grid](
        q, k, v, table, position, q_out, k_cache, v_cache, mask, nheads, nkv_heads, headdim, rotary_dim, st_cs,
        st_l, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), 0 if mask is None else mask.stride(0), 0 if position.shape[0] == 1 else 1,
        HAS_ROPE=table is not None, BLOCK_D=max(16, triton.next_power_of_2(headdim)), num_warps=1)
    return q_out
