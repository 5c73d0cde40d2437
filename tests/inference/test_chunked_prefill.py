"""Chunked prefill (the prompt fed in pieces that continue from the cache) equals one-shot prefill: the same cache
contents, the same logits and the same tokens, including chunk sizes that do not divide the prompt length."""

from __future__ import annotations

import pytest
import torch

from ssmkit.inference import allocate_cache, cache_tensors, generate_steps, prefill
from tests.compare import assert_close
from tests.inference.models import CONFIGS, random_ids, tiny_model

PROMPT_LEN = 23


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_chunked_prefill_leaves_the_same_cache_and_logits_as_one_shot(name, dtype):
    model = tiny_model(name, dtype).eval()
    prompt = random_ids(model.config.vocab_size, 2, PROMPT_LEN)
    one_state = allocate_cache(model, 2, PROMPT_LEN)
    one = prefill(model, prompt, one_state)
    one_tensors = cache_tensors(one_state)
    for chunk in (1, 4, 7, PROMPT_LEN + 5):
        state = allocate_cache(model, 2, PROMPT_LEN)
        logits = prefill(model, prompt, state, chunk_size=chunk)
        assert_close(logits, one, name=f"{name} chunk={chunk} last logits")
        for key, t in cache_tensors(state).items():
            if t.is_floating_point():
                assert_close(t, one_tensors[key], name=f"{name} chunk={chunk} {key}")
            else:
                assert torch.equal(t, one_tensors[key]), key


@pytest.mark.parametrize("name", ["mamba2", "hybrid-moe", "jamba-like", "s4"])
def test_chunked_prefill_generates_the_same_tokens_and_step_logits(name):
    model = tiny_model(name)
    prompt = random_ids(model.config.vocab_size, 2, PROMPT_LEN)
    ref = list(generate_steps(model, prompt, max_new_tokens=6, temperature=0.8, seed=5))
    for chunk in (3, 16):
        got = list(generate_steps(model, prompt, max_new_tokens=6, temperature=0.8, seed=5,
                                  prefill_chunk_size=chunk))
        assert torch.equal(torch.stack([s.tokens for s in got]), torch.stack([s.tokens for s in ref]))
        assert_close(torch.stack([s.logits for s in got]), torch.stack([s.logits for s in ref]),
                     name=f"{name} chunk={chunk}")
