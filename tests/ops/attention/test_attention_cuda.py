"""attention on CUDA: SDPA's fused kernels (flash / memory-efficient) against the float64 reference on CPU."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.attention import KVCache, attention
from tests.compare import assert_close

pytestmark = pytest.mark.gpu


def _qkv(batch, q_len, kv_len, nheads, nkv_heads, headdim, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape_q, shape_kv = (batch, q_len, nheads, headdim), (batch, kv_len, nkv_heads, headdim)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in (shape_q, shape_kv, shape_kv)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("q_len, kv_len", [(128, 128), (1, 300), (37, 100)])
@pytest.mark.parametrize("padded", [False, True])
def test_cuda_sdpa_matches_float64_reference(dtype, q_len, kv_len, padded):
    q, k, v = _qkv(2, q_len, kv_len, 8, 2, 64)
    mask = None
    if padded:
        mask = torch.ones(2, kv_len, dtype=torch.bool)
        mask[1, : kv_len // 3] = False
    want = attention(q, k, v, key_padding_mask=mask, impl="reference")
    got = attention(*(t.to("cuda", dtype) for t in (q, k, v)), key_padding_mask=None if mask is None else mask.cuda())
    assert got.dtype == dtype and got.is_cuda
    assert_close(got, want, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_fully_masked_queries_give_zeros_and_finite_gradients(dtype):
    q, k, v = (t.to("cuda", dtype).requires_grad_() for t in _qkv(2, 16, 16, 4, 4, 64))
    mask = torch.ones(2, 16, dtype=torch.bool, device="cuda")
    mask[0, :5] = False  # left padding: queries 0..4 of row 0 see no key
    out = attention(q, k, v, key_padding_mask=mask)
    out.float().sum().backward()
    assert_close(out[0, :5], torch.zeros_like(out[0, :5]), name="masked queries")
    for label, leaf in zip("qkv", (q, k, v)):
        assert bool(torch.isfinite(leaf.grad).all()), f"d{label} has NaN or Inf"


def test_cuda_per_row_decode_with_tensor_q_offset_matches_reference():
    q, k, v = _qkv(2, 6, 6, 4, 2, 32, seed=1)
    full = attention(q, k, v, impl="reference")
    cache = KVCache(2, 8, 2, 32, dtype=torch.float32, device="cuda", per_row=True)
    cache.append(k[:, :3].float().cuda(), v[:, :3].float().cuda())
    outs = []
    for t in range(3, 6):
        offset = cache.lengths.clone()
        k_all, v_all = cache.append(k[:, t : t + 1].float().cuda(), v[:, t : t + 1].float().cuda())
        outs.append(attention(q[:, t : t + 1].float().cuda(), k_all, v_all, q_offset=offset))
    assert_close(torch.cat(outs, dim=1), full[:, 3:], torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_attention_auto_takes_the_triton_kernel_on_cuda_and_matches_sdpa(dtype, monkeypatch):
    from ssmkit.ops.attention import decode_attention
    import ssmkit.ops.attention.triton as kernels

    calls = []
    kernel = kernels.decode_attention_triton
    monkeypatch.setattr(kernels, "decode_attention_triton", lambda *a, **kw: calls.append(1) or kernel(*a, **kw))
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(4, 16, 64, device="cuda", dtype=dtype, generator=g)
    k, v = (torch.randn(4, 3000, 4, 64, device="cuda", dtype=dtype, generator=g) for _ in range(2))
    position = torch.tensor([0, 17, 1500, 2999], device="cuda")
    key_mask = torch.rand(4, 3000, device="cuda", generator=g) > 0.1
    out = decode_attention(q, k, v, position, key_mask=key_mask)
    assert calls, "impl='auto' did not take the Triton kernel on CUDA"
    ref = decode_attention(q.double(), k.double(), v.double(), position, key_mask=key_mask, impl="reference")
    assert_close(out, ref, dtype, name="decode attention")
