"""ssmkit.ops.argmax_keys: the packed keys against torch.argmax (ties, signed zeros, infinities, NaN as
documented), folding, and the greedy feedback (the Triton launch under the interpreter against the torch ops it
replaces: argmax, copy, index_copy, add).

Interpreter checks (`case_*`) run in one child process with TRITON_INTERPRET=1 (see
tests/ops/selective_scan/test_triton.py); GPU tests carry the `gpu` mark.
"""

from __future__ import annotations

import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.ops.argmax_keys import (EMPTY_KEY, argmax_keys, feed_back_keys, feed_back_keys_ref, fold_argmax_keys,
                                    key_index)
from tests.ops.selective_scan.test_triton import interpreted_main, interpreter_cases_test

INTERPRETER_CASES = ("feed_back_matches_the_torch_ops",)


def feedback_buffers(batch, columns, col, seed=0, device="cpu"):
    """Keys of random logits (batch, 1000), tokens and history of garbage, the column counter at col."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, 1000, generator=g).to(device)
    keys = argmax_keys(logits)
    tokens = torch.randint(0, 9, (batch,), generator=g).to(device)
    history = torch.randint(0, 9, (batch, columns), generator=g).to(device)
    return logits, keys, tokens, history, torch.tensor([col], device=device)


def old_feedback(logits, tokens, history, index):
    """What the greedy step ran before the keys: torch.argmax, then copy, index_copy and add."""
    chosen = torch.argmax(logits, dim=-1)
    tokens.copy_(chosen)
    history.index_copy_(1, index, chosen.unsqueeze(1))
    index.add_(1)


def check_feedback(batch, columns, col, impl, device="cpu", history_view=False):
    logits, keys, tokens, history, index = feedback_buffers(batch, columns + 3, col, seed=batch, device=device)
    if history_view:  # a view with a row stride wider than its columns, as a caller's slice would be
        history = history[:, 1:columns + 1]
    want = [t.clone() for t in (tokens, history, index)]
    old_feedback(logits, *want)
    feed_back_keys(keys, tokens, history, index, impl=impl)
    for name, got, expected in zip(("tokens", "history", "index"), (tokens, history, index), want):
        assert torch.equal(got, expected), f"batch {batch}, column {col}: {name} {got.tolist()} vs {expected.tolist()}"
    assert (keys == EMPTY_KEY).all(), f"batch {batch}: keys not emptied: {keys.tolist()}"


# ---------------------------------------------------------------- interpreter cases (child process)

def case_feed_back_matches_the_torch_ops():
    """Batch 1, 3 (padded to 4), 40 (several warps); first, middle and last column; a history view."""
    for batch in (1, 3, 40):
        for col in (0, 5, 7):
            check_feedback(batch, 8, col, "triton")
    check_feedback(3, 8, 2, "triton", history_view=True)


# ---------------------------------------------------------------- tests

test_interpreted_feedback_matches_the_torch_ops = interpreter_cases_test(
    "tests.ops.argmax_keys.test_argmax_keys", INTERPRETER_CASES)


@settings(max_examples=60, deadline=None, database=None)
@given(rows=st.integers(1, 3), n=st.integers(1, 40), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       pool=st.sampled_from(["ties", "wide", "negative", "inf"]), seed=st.integers(0, 2 ** 16))
def test_key_index_is_torch_argmax_without_nan(rows, n, dtype, pool, seed):
    """Values from small pools (many ties), wide ranges, all negative, with +-inf and signed zeros: the index of
    the largest key is torch.argmax's first maximal index."""
    g = torch.Generator().manual_seed(seed)
    choices = {"ties": torch.tensor([-1.0, 0.0, -0.0, 2.0, 2.0]), "wide": torch.randn(64, generator=g) * 1e30,
               "negative": -torch.rand(8, generator=g) - 1e-3,
               "inf": torch.tensor([float("inf"), -float("inf"), 1.0, -0.0, 0.0])}[pool]
    logits = choices[torch.randint(0, len(choices), (rows, n), generator=g)].to(dtype)
    keys = argmax_keys(logits)
    assert keys.dtype == torch.int64 and keys.shape == (rows,)
    assert torch.equal(key_index(keys), torch.argmax(logits, -1)), (logits, key_index(keys))


def test_signed_zeros_rank_equal_so_the_first_wins():
    for logits, want in (([-0.0, 0.0], 0), ([0.0, -0.0], 0), ([-1.0, -0.0, 0.0], 1)):
        t = torch.tensor([logits])
        assert int(key_index(argmax_keys(t))) == want == int(torch.argmax(t)), logits


def test_keys_order_values_then_the_smaller_index():
    """Keys of one row compare as (value, -index): a larger value beats any index, an equal value the larger
    index; EMPTY_KEY is below the key of -inf at the last possible index."""
    values = torch.tensor([[-float("inf"), -3.0, -0.0, 1e-30, 2.0, float("inf")]])
    ordered = [argmax_keys(values[:, i:i + 1]) for i in range(values.shape[1])]
    assert all(a < b for a, b in zip(ordered, ordered[1:])), ordered
    tie = torch.tensor([[5.0, 5.0]])
    assert int(key_index(argmax_keys(tie))) == 0
    lowest = argmax_keys(torch.full((1, 2 ** 16), -float("inf")))
    assert EMPTY_KEY < int(lowest) and int(key_index(lowest)) == 0


def test_nan_ranks_by_its_sign_bit():
    """As documented: a NaN with the sign bit clear beats +inf (torch.argmax agrees: the first NaN); one with the
    sign bit set ranks below -inf (torch.argmax still returns it: the keys differ from it there)."""
    nan = torch.tensor(float("nan"))
    positive, negative = nan.copysign(torch.tensor(1.0)), nan.copysign(torch.tensor(-1.0))
    row = torch.tensor([[1.0, float("inf"), 0.0, -float("inf")]])
    for value, want in ((positive, 2), (negative, 1)):
        logits = row.clone()
        logits[0, 2] = value
        assert int(torch.argmax(logits)) == 2
        assert int(key_index(argmax_keys(logits))) == want, value.view(torch.int32)


def test_float64_values_rank_by_their_float32_rounding():
    logits = torch.tensor([[1.0, 1.0 + 1e-12, 0.5]], dtype=torch.float64)
    assert int(torch.argmax(logits)) == 1 and int(key_index(argmax_keys(logits))) == 0


def test_fold_keeps_the_larger_key():
    a, b = torch.tensor([[1.0, 5.0, 2.0]]), torch.tensor([[7.0, 0.0, 0.0]])
    keys = torch.full((1,), EMPTY_KEY)
    fold_argmax_keys(keys, a)
    assert int(key_index(keys)) == 1
    fold_argmax_keys(keys, b)
    assert int(key_index(keys)) == 0
    fold_argmax_keys(keys, a)
    assert int(key_index(keys)) == 0 and torch.equal(keys, argmax_keys(b))


@pytest.mark.parametrize("batch", [1, 3])
def test_reference_feedback_matches_the_torch_ops(batch):
    for col in (0, 6):
        check_feedback(batch, 7, col, "reference")


def test_auto_on_cpu_is_the_reference():
    check_feedback(2, 4, 1, "auto")


def test_bad_feedback_buffers_are_named():
    _, keys, tokens, history, index = feedback_buffers(2, 4, 0)
    for args, match in (((keys.int(), tokens, history, index), "keys: expected an int64 tensor of shape"),
                        ((keys[None], tokens, history, index), "keys: expected an int64 tensor of shape"),
                        ((keys, tokens[:1], history, index), r"tokens: expected an int64 tensor of shape \(2,\)"),
                        ((keys, tokens, history[:1], index), r"history: expected an int64 tensor \(2, columns\)"),
                        ((keys, tokens, history.t().contiguous().t(), index), "unit column stride"),
                        ((keys, tokens, history, torch.zeros(2, dtype=torch.int64)), r"index: .* shape \(1,\)"),
                        ((keys, tokens, history.to("meta"), index), "all tensors must be on one device")):
        with pytest.raises(ValueError, match=match):
            feed_back_keys(*args)


def test_reference_feedback_is_what_feed_back_keys_runs_off_cuda():
    _, keys, tokens, history, index = feedback_buffers(3, 4, 2)
    copies = [t.clone() for t in (keys, tokens, history, index)]
    feed_back_keys(keys, tokens, history, index)
    feed_back_keys_ref(*copies)
    assert all(torch.equal(a, b) for a, b in zip((keys, tokens, history, index), copies))


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_feedback_kernel_matches_the_torch_ops_on_gpu(batch):
    for col in (0, 9):
        check_feedback(batch, 10, col, "triton", device="cuda")
    check_feedback(batch, 10, 4, "triton", device="cuda", history_view=True)


if __name__ == "__main__":
    interpreted_main(globals(), sys.argv[1:])
