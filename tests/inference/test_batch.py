"""Batched generation of prompts of different lengths (left padding + attention mask) equals generating each
prompt alone: no padding leaks into the SSM states or into attention, and RoPE sees each row's own positions."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.inference import generate, generate_batch, generate_steps, left_pad
from tests.compare import assert_close
from tests.inference.models import CONFIGS, random_ids, tiny_model

LENGTHS = (1, 9, 4, 17)  # a one-token prompt, and lengths shorter than the conv kernel and the SSD chunk


def alone_and_batched(model, prompts, **kwargs):
    """(steps of each prompt generated alone, steps of the left-padded batch)."""
    ids, mask = left_pad(prompts, pad_token_id=model.config.vocab_size - 1)
    batched = list(generate_steps(model, ids, attention_mask=mask, **kwargs))
    alone = [list(generate_steps(model, torch.tensor([p]), **kwargs)) for p in prompts]
    return alone, batched


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_left_padded_batch_equals_each_prompt_alone(name, dtype):
    model = tiny_model(name, dtype)
    prompts = [random_ids(model.config.vocab_size, n, seed=n).tolist() for n in LENGTHS]
    for chunk in (None, 5):  # chunk 5: the first chunks of short rows are all padding
        alone, batched = alone_and_batched(model, prompts, max_new_tokens=6, prefill_chunk_size=chunk)
        for i in range(len(prompts)):
            tokens = torch.stack([s.tokens[i] for s in batched])
            assert torch.equal(tokens, torch.stack([s.tokens[0] for s in alone[i]])), f"row {i} chunk {chunk}"
            assert_close(torch.stack([s.logits[i] for s in batched]), torch.stack([s.logits[0] for s in alone[i]]),
                         name=f"{name} row {i} chunk {chunk} logits")


@settings(max_examples=8, deadline=None)
@given(name=st.sampled_from(sorted(CONFIGS)), lengths=st.lists(st.integers(1, 8), min_size=1, max_size=3))
def test_left_padded_batch_equals_alone_for_awkward_lengths(name, lengths):
    model = tiny_model(name)
    prompts = [random_ids(model.config.vocab_size, n, seed=i).tolist() for i, n in enumerate(lengths)]
    alone, batched = alone_and_batched(model, prompts, max_new_tokens=3)
    for i in range(len(prompts)):
        assert_close(torch.stack([s.logits[i] for s in batched]), torch.stack([s.logits[0] for s in alone[i]]),
                     name=f"{name} row {i} logits")


def test_padding_token_values_do_not_matter():
    model = tiny_model("all-mixers-moe")
    ids, mask = left_pad([[3, 4, 5, 6, 7], [8, 9]], pad_token_id=0)
    ref = generate(model, ids, max_new_tokens=5, attention_mask=mask)
    other = ids.masked_fill(mask == 0, 11)
    out = generate(model, other, max_new_tokens=5, attention_mask=mask.bool())
    assert torch.equal(out[:, ids.shape[1]:], ref[:, ids.shape[1]:])
    assert torch.equal(out[:, :ids.shape[1]], other)  # the prompt is returned as given


def test_generate_batch_returns_each_rows_tokens_up_to_its_stop_token():
    model = tiny_model("hybrid-moe")
    prompts = [random_ids(model.config.vocab_size, n, seed=n).tolist() for n in (3, 7, 5)]
    free = generate_batch(model, prompts, max_new_tokens=8, eos_token_id=[])
    assert [len(t) for t in free] == [8, 8, 8]
    eos = free[1][2]  # row 1 stops at its third token (other rows may stop earlier, where they emit it)
    stopped = generate_batch(model, prompts, max_new_tokens=8, eos_token_id=eos)
    for got, ref in zip(stopped, free):
        cut = ref.index(eos) + 1 if eos in ref else len(ref)
        assert got == ref[:cut]
    assert stopped[1] == free[1][:3]
