"""Cached decode equals full recomputation: the logits of every generated token, produced from the cache, equal the
logits at that position of one full forward (no cache) over prompt + generated tokens, for every family."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.inference import generate, generate_steps
from tests.compare import assert_close
from tests.inference.models import CONFIGS, random_ids, tiny_model


def full_forward_logits(model, prompt, steps):
    """Logits (batch, n_new, vocab) of one uncached forward over prompt + new tokens, at the positions that
    predicted each new token."""
    tokens = torch.cat([prompt, torch.stack([s.tokens for s in steps], dim=1)], dim=1)
    with torch.no_grad():
        logits = model.eval()(tokens)
    return logits[:, prompt.shape[1] - 1: tokens.shape[1] - 1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_decode_equals_full_recomputation_at_every_step(name, dtype):
    model = tiny_model(name, dtype)
    prompt = random_ids(model.config.vocab_size, 2, 11)
    # Sampling (seeded) rather than greedy so the generated tokens vary; the check does not depend on how they
    # were chosen.
    steps = list(generate_steps(model, prompt, max_new_tokens=9, temperature=1.0, seed=0))
    assert len(steps) == 9
    cached = torch.stack([s.logits for s in steps], dim=1)
    assert_close(cached, full_forward_logits(model, prompt, steps), name=f"{name} {dtype} step logits")


@settings(max_examples=8, deadline=None)
@given(name=st.sampled_from(sorted(CONFIGS)), batch=st.integers(1, 2), prompt_len=st.integers(1, 9),
       new=st.integers(1, 4), chunk=st.sampled_from([None, 1, 2, 3, 5]))
def test_cached_decode_equals_full_recomputation_for_awkward_lengths(name, batch, prompt_len, new, chunk):
    model = tiny_model(name)
    prompt = random_ids(model.config.vocab_size, batch, prompt_len, seed=prompt_len)
    steps = list(generate_steps(model, prompt, max_new_tokens=new, prefill_chunk_size=chunk))
    cached = torch.stack([s.logits for s in steps], dim=1)
    assert_close(cached, full_forward_logits(model, prompt, steps), name=f"{name} step logits")


def test_greedy_tokens_are_the_argmax_of_the_full_forward_and_generate_returns_prompt_plus_new():
    model = tiny_model("hybrid-moe")
    prompt = random_ids(model.config.vocab_size, 3, 6)
    out = generate(model, prompt, max_new_tokens=7)
    assert out.shape == (3, 13) and out.dtype == torch.int64
    assert torch.equal(out[:, :6], prompt)
    with torch.no_grad():
        logits = model(out)
    assert torch.equal(out[:, 6:], logits[:, 5:-1].argmax(-1))
    assert torch.equal(generate(model, prompt.int(), max_new_tokens=7), out)  # int32 prompts give int64 too


def test_generate_restores_training_mode_and_model_generate_is_the_same_function():
    model = tiny_model("all-mixers-moe")  # MoE capacity limits act in training mode only
    assert model.training
    prompt = random_ids(model.config.vocab_size, 2, 5)
    out = model.generate(prompt, max_new_tokens=4)
    assert model.training
    assert torch.equal(out, generate(model.eval(), prompt, max_new_tokens=4))
    assert not model.training
