"""Prefill from CUDA graphs in power-of-two pieces (ssmkit.inference.prefill_graphs) against one eager forward of
the whole prompt: the same logits and states up to rounding. On the CPU the pieces run eagerly (capture=False),
which checks the piece arithmetic and the state hand-over; on a GPU the captured graphs replay."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ssmkit.inference.prefill_graphs as prefill_graphs
from ssmkit.inference import allocate_cache, cache_tensors, prefill
from ssmkit.inference.prefill_graphs import GraphedPrefill, graph_prefill_reason, graphed_prefill, pieces
from tests.compare import assert_close
from tests.inference.models import random_ids, tiny_model


@settings(max_examples=60, deadline=None)
@given(seqlen=st.integers(1, 5000), log_max=st.integers(0, 12))
def test_pieces_are_powers_of_two_largest_first_summing_to_the_prompt(seqlen, log_max):
    max_piece = 1 << log_max
    out = pieces(seqlen, max_piece)
    assert sum(out) == seqlen
    assert all(n & (n - 1) == 0 and 1 <= n <= max_piece for n in out)
    assert out == sorted(out, reverse=True)
    assert len([n for n in out if n < max_piece]) == len(set(n for n in out if n < max_piece))  # binary digits


def eager_reference(model, ids):
    state = allocate_cache(model, ids.shape[0], ids.shape[1])
    return prefill(model, ids, state, cuda_graph=False), state


def check_matches_one_forward(model, ids, state_before=None, tol_dtype=None):
    """GraphedPrefill.run (pieces) against prefill(cuda_graph=False) (one forward), from the same state."""
    got_state = allocate_cache(model, ids.shape[0], ids.shape[1])
    want_state = allocate_cache(model, ids.shape[0], ids.shape[1])
    if state_before is not None:
        prefill(model, state_before, got_state, cuda_graph=False)
        prefill(model, state_before, want_state, cuda_graph=False)
    got = graphed_prefill(model, ids.shape[0]).run(ids, got_state)
    want = prefill(model, ids, want_state, cuda_graph=False)
    assert_close(got, want, tol_dtype, name="last logits")
    for (name, a), b in zip(cache_tensors(got_state).items(), cache_tensors(want_state).values()):
        assert_close(a, b, tol_dtype, name=name)


@pytest.mark.parametrize("name", ["mamba", "mamba2", "mamba2-groups-odd"])
@pytest.mark.parametrize("batch,seqlen", [(1, 1), (1, 37), (3, 13), (2, 70)])
def test_eager_pieces_equal_one_forward_in_float64(name, batch, seqlen, monkeypatch):
    monkeypatch.setattr(prefill_graphs, "MAX_PIECE_TOKENS", 32)  # several full pieces, then the binary rest
    model = tiny_model(name).eval()
    monkeypatch.setattr(prefill_graphs, "GraphedPrefill",
                        lambda m, b: GraphedPrefill(m, b, capture=False))
    prefill_graphs.drop_prefill_graphs(model)
    ids = random_ids(model.config.vocab_size, batch, seqlen)
    check_matches_one_forward(model, ids)
    check_matches_one_forward(model, ids, state_before=random_ids(model.config.vocab_size, batch, 9, seed=3))


def test_a_state_of_other_rows_is_refused_naming_the_tensor():
    model = tiny_model("mamba2").eval()
    runner = GraphedPrefill(model, 3, capture=False)
    with pytest.raises(ValueError, match=r"state: layers\.0\.\w+ is .*expected"):
        runner.run(random_ids(model.config.vocab_size, 3, 5), allocate_cache(model, 2, 5))


def test_reasons_to_stay_eager():
    ids = random_ids(100, 1, 8)
    llama, mamba2 = tiny_model("llama").eval(), tiny_model("mamba2").eval()
    assert "Mamba" in graph_prefill_reason(llama, ids, None, None)
    assert "padded" in graph_prefill_reason(mamba2, ids, torch.ones(1, 8, dtype=torch.bool), None)
    assert "chunk" in graph_prefill_reason(mamba2, ids, None, 4)
    assert "more than one row" in graph_prefill_reason(mamba2, random_ids(100, 2, 9), None, None)
    assert "prompt tokens" in graph_prefill_reason(mamba2, random_ids(100, 1, 17000), None, None)
    assert graph_prefill_reason(mamba2, ids, None, None) == "not on a CUDA device"
    assert graph_prefill_reason(tiny_model("mamba2"), ids, None, None) == "training mode"


# ---------------------------------------------------------------- GPU: captured graphs

@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mamba", "mamba2", "mamba2-groups-odd"])
def test_graph_prefill_equals_one_eager_forward_on_gpu(name):
    model = tiny_model(name, torch.float32).to("cuda").eval()
    prefill_graphs.drop_prefill_graphs(model)
    vocab = model.config.vocab_size
    for seqlen, seed in [(37, 1), (37, 2), (1, 3), (300, 4)]:  # 37 twice: the same graphs replay new ids
        check_matches_one_forward(model, random_ids(vocab, 1, seqlen, seed=seed).cuda(), tol_dtype=torch.float32)
    runner = graphed_prefill(model, 1)
    assert runner.fallback_reason is None  # every power of two up to the largest piece captured on first use
    assert sorted(runner._graphs) == [1 << i for i in range(runner.max_piece.bit_length())]
    check_matches_one_forward(model, random_ids(vocab, 1, 20, seed=5).cuda(), tol_dtype=torch.float32,
                              state_before=random_ids(vocab, 1, 7, seed=6).cuda())
    # a runner for 2 rows (prefill itself graphs batch 1 only; the runner takes any batch) replaces it
    check_matches_one_forward(model, random_ids(vocab, 2, 45, seed=7).cuda(), tol_dtype=torch.float32)


@pytest.mark.gpu
def test_generate_through_graph_prefill_gives_the_eager_tokens_on_gpu():
    model = tiny_model("mamba2", torch.float32).to("cuda").eval()
    ids = random_ids(model.config.vocab_size, 1, 50).cuda()
    prefill_graphs.drop_prefill_graphs(model)
    with_graphs = model.generate(ids, max_new_tokens=8)
    assert 1 in prefill_graphs._BY_MODEL.get(model, {})
    eager = model.generate(ids, max_new_tokens=8, cuda_graph=False)
    assert torch.equal(with_graphs, eager)
