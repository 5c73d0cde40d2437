"""Packed documents (cu_seqlens) through every mixer equal each document run alone, in float64: nothing crosses a
document boundary (SSM state, conv window, attention, RoPE position)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.layers.attention import packed_attention
from ssmkit.layers.packing import positions_in_sequence
from tests.compare import assert_close

from .test_mixers import CONFIGS, _mixer


def _cu(lengths) -> torch.Tensor:
    return torch.tensor([0] + list(lengths)).cumsum(0)


def _each_alone(layer, x, cu):
    bounds = cu.tolist()
    return torch.cat([layer(x[:, s:e]) for s, e in zip(bounds[:-1], bounds[1:])], dim=1)


@pytest.mark.parametrize("key", sorted(CONFIGS))
@settings(max_examples=4, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=4))
def test_packed_forward_equals_each_document_alone(key, lengths):
    layer = _mixer(key)
    cu = _cu(lengths)
    x = torch.randn(1, int(cu[-1]), CONFIGS[key][1]["d_model"], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(len(lengths)))
    with torch.no_grad():
        got = layer(x, cu_seqlens=cu)
        want = _each_alone(layer, x, cu)
    assert_close(got, want, name=f"{key} packed")


def test_packed_attention_rotates_each_document_from_position_zero():
    layer = _mixer("attention-gqa-partial")
    x = torch.randn(1, 4, 12, dtype=torch.float64)
    doc = x[:, :2]
    with torch.no_grad():
        # The same two tokens as the second document of a row give the output they give alone.
        got = layer(torch.cat([x[:, 2:], doc], dim=1), cu_seqlens=torch.tensor([0, 2, 4]))[:, 2:]
        want = layer(doc)
    assert_close(got, want, name="second document")


def test_positions_restart_at_each_document():
    seq, pos = positions_in_sequence(torch.tensor([0, 2, 5, 6]), 6)
    assert seq.tolist() == [0, 0, 1, 1, 1, 2]
    assert pos.tolist() == [0, 1, 0, 1, 2, 0]


def test_packed_attention_equals_one_softmax_under_a_block_diagonal_causal_mask():
    g = torch.Generator().manual_seed(0)
    cu = [0, 3, 4, 9]
    q = torch.randn(1, 9, 4, 5, dtype=torch.float64, generator=g)
    k, v = (torch.randn(1, 9, 2, 5, dtype=torch.float64, generator=g) for _ in range(2))
    seq, _ = positions_in_sequence(torch.tensor(cu), 9)
    pos = torch.arange(9)
    allowed = (seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None])  # (query, key)
    kh, vh = k.repeat_interleave(2, dim=2), v.repeat_interleave(2, dim=2)  # query head h reads kv head h // 2
    scores = torch.einsum("bqhd,bkhd->bhqk", q, kh) * 0.3
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    want = torch.einsum("bhqk,bkhd->bqhd", probs, vh)
    assert_close(packed_attention(q, k, v, cu, 0.3), want, name="packed attention")
