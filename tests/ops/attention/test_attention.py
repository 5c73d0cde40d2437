"""attention: the reference against a per-query loop, SDPA against the reference, GQA, decode and padding."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.ops.attention import KVCache, attention
from tests.compare import assert_close

F64 = torch.float64


def attention_loop(q, k, v, causal, offset):
    """float64, one query and one head at a time: softmax over the keys it may see, times the values."""
    batch, q_len, nheads, headdim = q.shape
    group = nheads // k.shape[2]
    out = torch.zeros(batch, q_len, nheads, headdim, dtype=F64)
    for b in range(batch):
        for h in range(nheads):
            for i in range(q_len):
                last = offset + i if causal else k.shape[1] - 1
                keys, values = k[b, : last + 1, h // group].double(), v[b, : last + 1, h // group].double()
                w = torch.softmax(keys @ q[b, i, h].double() / math.sqrt(headdim), dim=0)
                out[b, i, h] = w @ values
    return out


def _qkv(batch, q_len, kv_len, nheads, nkv_heads, headdim, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_len, nheads, headdim, generator=g, dtype=F64).to(dtype)
    k = torch.randn(batch, kv_len, nkv_heads, headdim, generator=g, dtype=F64).to(dtype)
    v = torch.randn(batch, kv_len, nkv_heads, headdim, generator=g, dtype=F64).to(dtype)
    return q, k, v


@pytest.mark.parametrize("q_len, kv_len", [(1, 1), (1, 9), (5, 5), (4, 11)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("nkv_heads", [1, 2, 4])
def test_reference_matches_per_query_loop_in_float64(q_len, kv_len, causal, nkv_heads):
    q, k, v = _qkv(2, q_len, kv_len, 4, nkv_heads, 8)
    got = attention(q, k, v, causal=causal, impl="reference")
    assert_close(got, attention_loop(q, k, v, causal, kv_len - q_len))


@pytest.mark.parametrize("q_len, kv_len", [(1, 1), (1, 17), (16, 16), (7, 20), (63, 63)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("nkv_heads", [1, 3, 6])
def test_sdpa_in_float32_matches_reference_in_float64(q_len, kv_len, causal, nkv_heads):
    q, k, v = _qkv(2, q_len, kv_len, 6, nkv_heads, 20)
    want = attention(q, k, v, causal=causal, impl="reference")
    got = attention(q.float(), k.float(), v.float(), causal=causal, impl="sdpa")
    assert got.dtype == torch.float32
    assert_close(got, want, torch.float32)


def test_auto_is_sdpa():
    q, k, v = _qkv(1, 3, 5, 2, 1, 4)
    assert_close(attention(q, k, v), attention(q, k, v, impl="sdpa"), tol=(0.0, 0.0))  # the same call


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_gqa_equals_mha_with_repeated_kv_heads(impl):
    q, k, v = _qkv(2, 6, 9, 8, 2, 16)
    k_rep, v_rep = k.repeat_interleave(4, dim=2), v.repeat_interleave(4, dim=2)
    assert_close(attention(q, k, v, impl=impl), attention(q, k_rep, v_rep, impl=impl))


def test_sdpa_gradients_match_reference_gradients_in_float64():
    q, k, v = _qkv(2, 5, 8, 4, 2, 8)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, :3] = False
    weights = torch.linspace(-1, 1, 2 * 5 * 4 * 8, dtype=F64).view(2, 5, 4, 8)  # a generic upstream gradient
    grads = {}
    for impl in ("reference", "sdpa"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attention(*leaves, key_padding_mask=mask, q_offset=3, impl=impl)
        grads[impl] = torch.autograd.grad((out * weights).sum(), leaves)
    for label, got, want in zip("qkv", grads["sdpa"], grads["reference"]):
        assert_close(got, want, grad=True, name=f"d{label}")


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("kv_dtype", [None, torch.float32])
def test_decode_token_by_token_with_kv_cache_equals_full_causal_attention(impl, kv_dtype):
    q, k, v = _qkv(2, 12, 12, 4, 2, 8)
    full = attention(q, k, v, impl=impl)
    cache = KVCache(2, 16, 2, 8, dtype=F64, kv_dtype=kv_dtype)
    prefill = 5
    k_all, v_all = cache.append(k[:, :prefill], v[:, :prefill])
    outs = [attention(q[:, :prefill], k_all, v_all, impl=impl)]
    for t in range(prefill, 12):
        k_all, v_all = cache.append(k[:, t : t + 1], v[:, t : t + 1])
        outs.append(attention(q[:, t : t + 1], k_all, v_all, q_offset=t, impl=impl))
    dtype = F64 if kv_dtype is None else torch.float32  # float32 storage rounds k and v once
    assert_close(torch.cat(outs, dim=1), full, dtype)


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_q_offset_inside_a_longer_key_sequence_equals_truncated_keys(impl):
    q, k, v = _qkv(2, 3, 10, 2, 2, 8)
    got = attention(q, k, v, q_offset=4, impl=impl)  # queries at positions 4, 5, 6; keys 7..9 are unfilled
    assert_close(got, attention(q, k[:, :7], v[:, :7], impl=impl))


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_left_padding_mask_equals_each_row_run_unpadded(impl):
    lengths = [7, 3, 1]
    seqlen = max(lengths)
    q, k, v = _qkv(3, seqlen, seqlen, 4, 2, 8, seed=4)
    mask = torch.arange(seqlen)[None, :] >= (seqlen - torch.tensor(lengths))[:, None]  # (B, S) left-padded
    out = attention(q, k, v, key_padding_mask=mask, impl=impl)
    for b, n in enumerate(lengths):
        alone = attention(q[b : b + 1, -n:], k[b : b + 1, -n:], v[b : b + 1, -n:], impl=impl)
        assert_close(out[b : b + 1, -n:], alone, name=f"row {b}")
        if n < seqlen:
            # Padded queries see no key at all; they must read zeros, not NaN, so later layers stay finite.
            pad = out[b, : seqlen - n]
            assert_close(pad, torch.zeros_like(pad), name=f"padding of row {b}")


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_fully_masked_queries_give_zeros_and_finite_gradients(impl):
    q, k, v = _qkv(2, 4, 4, 2, 1, 8)
    mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, key_padding_mask=mask, impl=impl)
    out.sum().backward()
    assert_close(out[0, :2], torch.zeros_like(out[0, :2]), name="masked queries")
    for label, leaf in zip("qkv", leaves):
        assert bool(torch.isfinite(leaf.grad).all()), f"d{label} has NaN or Inf"


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_per_row_cache_after_right_padded_prefill_equals_each_row_alone(impl):
    lengths = torch.tensor([6, 2, 4])
    total = 9  # each row's prompt followed by 3 decoded tokens, kept in one tensor per row
    q, k, v = _qkv(3, total, total, 4, 2, 8, seed=9)
    cache = KVCache(3, 12, 2, 8, dtype=F64, per_row=True)
    prompt = int(lengths.max())
    k_all, v_all = cache.append(k[:, :prompt], v[:, :prompt])  # row b is right-padded past lengths[b]
    prefill = attention(q[:, :prompt], k_all, v_all, impl=impl)
    cache.truncate(lengths)
    decoded = []
    for step in range(3):
        pos = lengths + step  # (B,) where each row's next token goes
        rows = torch.arange(3)
        q_t, k_t, v_t = (t[rows, pos][:, None] for t in (q, k, v))
        k_all, v_all = cache.append(k_t, v_t)
        decoded.append(attention(q_t, k_all, v_all, q_offset=pos, impl=impl))
    for b, n in enumerate(lengths.tolist()):
        alone = attention(q[b : b + 1, : n + 3], k[b : b + 1, : n + 3], v[b : b + 1, : n + 3], impl=impl)
        assert_close(prefill[b : b + 1, :n], alone[:, :n], name=f"prefill of row {b}")
        for step in range(3):
            assert_close(decoded[step][b : b + 1], alone[:, n + step : n + step + 1], name=f"row {b} step {step}")


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    q_len=st.integers(1, 9),
    extra=st.integers(0, 6),
    nkv_heads=st.integers(1, 3),
    group=st.integers(1, 3),
    headdim=st.sampled_from([1, 3, 8, 13]),
    causal=st.booleans(),
)
def test_awkward_shapes_match_per_query_loop(batch, q_len, extra, nkv_heads, group, headdim, causal):
    q, k, v = _qkv(batch, q_len, q_len + extra, nkv_heads * group, nkv_heads, headdim)
    want = attention_loop(q, k, v, causal, extra)
    assert_close(attention(q, k, v, causal=causal, impl="reference"), want)
    assert_close(attention(q, k, v, causal=causal, impl="sdpa"), want)


def _call(**overrides):
    q, k, v = _qkv(2, 3, 5, 4, 2, 8)
    kwargs = dict(q=q, k=k, v=v)
    kwargs.update(overrides)
    return lambda: attention(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), **kwargs)


@pytest.mark.parametrize(
    "overrides, argument",
    [
        (dict(q=torch.zeros(2, 3, 32, dtype=F64)), "q"),
        (dict(k=torch.zeros(2, 5, 16, dtype=F64)), "k"),
        (dict(k=torch.zeros(2, 5, 3, 8, dtype=F64), v=torch.zeros(2, 5, 3, 8, dtype=F64)), "nkv_heads"),
        (dict(k=torch.zeros(2, 5, 2, 4, dtype=F64)), "headdim"),
        (dict(k=torch.zeros(1, 5, 2, 8, dtype=F64)), "k"),
        (dict(v=torch.zeros(2, 6, 2, 8, dtype=F64)), "v"),
        (dict(v=torch.zeros(2, 5, 2, 8, dtype=torch.float32)), "v"),
        (dict(key_padding_mask=torch.ones(2, 5)), "key_padding_mask"),
        (dict(key_padding_mask=torch.ones(2, 4, dtype=torch.bool)), "key_padding_mask"),
        (dict(q_offset=3), "q_offset"),
        (dict(q_offset=-1), "q_offset"),
        (dict(q_offset=torch.zeros(3, dtype=torch.int64)), "q_offset"),
        (dict(key_padding_mask=torch.ones(2, 5, dtype=torch.bool, device="meta")), "device"),
        (dict(impl="flash"), "impl"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(overrides, argument):
    with pytest.raises(ValueError, match=argument):
        _call(**overrides)()


@pytest.mark.parametrize("impl", ["auto", "sdpa", "reference"])
def test_decode_attention_masks_positions_past_each_rows_and_key_mask_on_the_device(impl):
    """decode_attention over a whole cache equals float64 softmax attention over the allowed keys only."""
    from ssmkit.ops.attention import decode_attention

    g = torch.Generator().manual_seed(3)
    batch, max_len, nheads, nkv, hd = 3, 11, 4, 2, 8
    q = torch.randn(batch, nheads, hd, generator=g)
    k, v = (torch.randn(batch, max_len, nkv, hd, generator=g) for _ in range(2))
    position = torch.tensor([0, 5, 10])
    key_mask = torch.rand(batch, max_len, generator=g) > 0.3
    key_mask[:, 0] = True
    out = decode_attention(q, k, v, position, key_mask=key_mask, impl=impl)
    for b in range(batch):
        keep = [j for j in range(max_len) if j <= position[b] and key_mask[b, j]]
        kk = k[b, keep].double().repeat_interleave(nheads // nkv, dim=1)  # (n, nheads, hd)
        vv = v[b, keep].double().repeat_interleave(nheads // nkv, dim=1)
        w = torch.softmax(torch.einsum("hd,nhd->hn", q[b].double(), kk) * hd ** -0.5, dim=-1)
        assert_close(out[b], torch.einsum("hn,nhd->hd", w, vv), torch.float32, name=f"row {b}")
    shared = decode_attention(q, k, v, torch.tensor([4]), impl=impl)  # (1,) position: every row, no mask
    assert_close(shared, decode_attention(q, k, v, torch.tensor([4, 4, 4]), impl=impl), torch.float32)
    with pytest.raises(ValueError, match="impl"):
        decode_attention(q, k, v, position, impl="flash")
