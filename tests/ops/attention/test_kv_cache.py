"""KVCache (plain and int8) and the int8 quantizer: stored values, views, bounds, per-row writes, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.ops.attention import KVCache, dequantize_int8, quantize_int8
from tests.compare import assert_close

F64 = torch.float64
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, F64: 2.0**-53}


def round_trip_bound(scale, compute_dtype):
    """Per-element bound on |t - dequantize(quantize(t))|, derived for stored scale s and roundoff u:

    r = t / s exactly (s is the stored scale), |r| <= 127 up to rounding, q = round(fl(r)) (clamped to +-127,
    which only acts when r is in (127, 127.5)). fl(r) = r (1 + d), |d| <= u, so |q - r| <= 1/2 + 128 u.
    The product fl(q s) adds at most |q s| u <= 127 s u. Hence |t - fl(q s)| <= s (1/2 + 255 u).
    """
    return scale * (0.5 + 255 * UNIT_ROUNDOFF[compute_dtype])


@pytest.mark.parametrize("dtype, compute", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                            (F64, F64)])
def test_int8_round_trip_error_is_at_most_half_a_scale_step(dtype, compute):
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(3, 17, 4, 64, generator=g, dtype=F64) * torch.rand(3, 17, 4, 1, generator=g, dtype=F64) * 10)
    t = t.to(dtype)
    q, scale = quantize_int8(t)
    assert q.dtype == torch.int8 and scale.shape == (3, 17, 4, 1) and scale.dtype == compute
    err = (dequantize_int8(q, scale).double() - t.double()).abs()
    bound = round_trip_bound(scale.double(), compute)
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"round-trip error reaches {worst:.6f} x the derived bound s (1/2 + 255 u)"
    # The bound is tight: random data lands close to half a step somewhere.
    assert worst > 0.9, f"largest error is only {worst:.3f} x the bound; is the rounding coarser than expected?"


def test_int8_quantization_hits_plus_minus_127_at_the_absmax_and_keeps_zero_slices_exact():
    t = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [-3.0, 1.5, 3.0]])
    q, scale = quantize_int8(t)
    assert q.abs().amax(-1).tolist() == [0, 127, 127]
    assert_close(dequantize_int8(q, scale)[0], t[0], tol=(0.0, 0.0))  # zeros stay exactly zero
    q_rows, scale_rows = quantize_int8(t, dim=0)
    assert scale_rows.shape == (1, 3)
    assert_close(scale_rows, t.abs().amax(0, keepdim=True) / 127, tol=(0.0, 0.0))  # the definition, same ops


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), dim=st.integers(-1, 0), seed=st.integers(0, 999))
def test_int8_round_trip_bound_holds_for_awkward_shapes(shape, dim, seed):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3
    q, scale = quantize_int8(t, dim=dim)
    err = (dequantize_int8(q, scale).double() - t.double()).abs()
    assert bool((err <= round_trip_bound(scale.double(), torch.float32)).all())


def test_append_returns_views_of_the_filled_part_equal_to_the_concatenation():
    cache = KVCache(2, 10, 3, 4, dtype=F64)
    parts = [torch.full((2, n, 3, 4), float(n), dtype=F64) + torch.arange(4, dtype=F64) for n in (4, 1, 2)]
    for i in range(len(parts)):
        k_all, v_all = cache.append(parts[i], -parts[i])
    assert cache.length == 7 and k_all.shape == (2, 7, 3, 4)
    assert k_all.data_ptr() == cache.k.data_ptr() and v_all.data_ptr() == cache.v.data_ptr()
    assert_close(k_all, torch.cat(parts, dim=1), tol=(0.0, 0.0))  # copies only: bitwise equal
    assert_close(v_all, -torch.cat(parts, dim=1), tol=(0.0, 0.0))


def test_append_past_max_len_raises_value_error_naming_max_len_and_the_length_needed():
    cache = KVCache(1, 8, 1, 2)
    cache.append(torch.zeros(1, 6, 1, 2), torch.zeros(1, 6, 1, 2))
    with pytest.raises(ValueError, match=r"max_len.*8.*needs 9"):
        cache.append(torch.zeros(1, 3, 1, 2), torch.zeros(1, 3, 1, 2))
    assert cache.length == 6  # a refused append leaves the cache as it was


def test_int8_cache_returns_dequantized_values_within_the_round_trip_bound():
    cache = KVCache(2, 9, 2, 16, dtype=torch.float32, kv_dtype=torch.int8)
    g = torch.Generator().manual_seed(1)
    k = torch.randn(2, 9, 2, 16, generator=g) * 4
    v = torch.randn(2, 9, 2, 16, generator=g)
    cache.append(k[:, :5], v[:, :5])
    for t in range(5, 9):
        k_all, v_all = cache.append(k[:, t : t + 1], v[:, t : t + 1])
    assert cache.k.dtype == torch.int8 and k_all.dtype == torch.float32
    for name, got, want in (("k", k_all, k), ("v", v_all, v)):
        q, scale = quantize_int8(want)
        assert_close(got, dequantize_int8(q, scale), tol=(0.0, 0.0), name=name)  # the same quantizer per token
        assert bool(((got - want).abs() <= round_trip_bound(scale, torch.float32)).all()), name


def test_per_row_cache_writes_each_row_after_its_own_length():
    cache = KVCache(3, 6, 1, 1, dtype=F64, per_row=True)
    cache.append(torch.ones(3, 3, 1, 1, dtype=F64), torch.ones(3, 3, 1, 1, dtype=F64))
    cache.truncate(torch.tensor([3, 1, 2]))
    k_all, _ = cache.append(torch.full((3, 2, 1, 1), 7.0, dtype=F64), torch.zeros(3, 2, 1, 1, dtype=F64))
    assert cache.lengths.tolist() == [5, 3, 4] and cache.length == 5
    want = torch.tensor([[1, 1, 1, 7, 7], [1, 7, 7, 0, 0], [1, 1, 7, 7, 0]], dtype=F64)
    assert_close(k_all[..., 0, 0], want, tol=(0.0, 0.0))  # copies only: exact


def test_truncate_and_reset_shorten_the_filled_part():
    cache = KVCache(1, 5, 1, 1)
    cache.append(torch.zeros(1, 4, 1, 1), torch.zeros(1, 4, 1, 1))
    cache.truncate(2)
    assert cache.append(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))[0].shape[1] == 3
    cache.reset()
    assert cache.length == 0
    with pytest.raises(ValueError, match="length"):
        cache.truncate(1)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(batch=0), "batch"),
        (dict(max_len=2.5), "max_len"),
        (dict(dtype=torch.int32), "dtype"),
        (dict(kv_dtype=torch.int16), "kv_dtype"),
    ],
)
def test_bad_cache_settings_raise_value_error_naming_the_field(kwargs, argument):
    settings_ = dict(batch=1, max_len=4, nkv_heads=1, headdim=2)
    settings_.update(kwargs)
    with pytest.raises(ValueError, match=argument):
        KVCache(**settings_)


@pytest.mark.parametrize(
    "k_shape, v_shape, argument",
    [
        ((1, 2, 1, 3), (1, 2, 1, 2), "k_new"),
        ((2, 2, 1, 2), (2, 2, 1, 2), "k_new"),
        ((1, 2, 1, 2), (1, 1, 1, 2), "v_new"),
        ((1, 2, 2), (1, 2, 2), "k_new"),
    ],
)
def test_append_with_wrong_shapes_raises_value_error_naming_the_argument(k_shape, v_shape, argument):
    cache = KVCache(1, 4, 1, 2)
    with pytest.raises(ValueError, match=argument):
        cache.append(torch.zeros(k_shape), torch.zeros(v_shape))
