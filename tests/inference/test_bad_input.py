"""Bad arguments fail before any work with a ValueError that names the argument, what was expected and what came."""

from __future__ import annotations

import pytest
import torch

from ssmkit.inference import generate, generate_batch, left_pad
from tests.inference.models import random_ids, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("hybrid-moe")


def ids(model, *shape):
    return random_ids(model.config.vocab_size, *shape)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=-1), "max_new_tokens: expected an int >= 0, got -1"),
    (dict(max_new_tokens=2.0), "max_new_tokens"),
    (dict(temperature=-0.5), r"temperature: expected a finite number >= 0 \(0 = greedy\), got -0.5"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(top_p=0.0), r"top_p: expected None or a number in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.1), "top_p"),
    (dict(top_k=0), "top_k: expected None or an int >= 1, got 0"),
    (dict(seed=-3), "seed"),
    (dict(prefill_chunk_size=0), "prefill_chunk_size"),
    (dict(eos_token_id=256), r"eos_token_id: expected token ids in \[0, 256\)"),
    (dict(eos_token_id=[1, -2]), "eos_token_id"),
    (dict(eos_token_id=1, pad_token_id=999), "pad_token_id"),
    (dict(kv_dtype=torch.int32), "kv_dtype"),
])
def test_bad_generation_arguments_are_rejected(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, ids(model, 2, 5), **{"max_new_tokens": 3, **kwargs})


def test_empty_prompts_are_rejected(model):
    with pytest.raises(ValueError, match="non-empty prompt, got shape \\(1, 0\\)"):
        generate(model, torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"attention_mask: rows \[1\] have no real token"):
        generate(model, ids(model, 2, 3), attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"prompts \[0\] are empty"):
        generate_batch(model, [[], [1, 2]])


@pytest.mark.parametrize("bad, message", [(256, r"got ids in \[\d+, 256\]"), (-1, r"got ids in \[-1, ")])
def test_token_ids_out_of_range_are_rejected(model, bad, message):
    prompt = ids(model, 2, 4)
    prompt[1, 2] = bad
    with pytest.raises(ValueError, match=r"input_ids: expected token ids in \[0, 256\) \(vocab_size\), " + message):
        generate(model, prompt)


def test_out_of_range_ids_under_padding_are_ignored(model):
    prompt, mask = left_pad([[1, 2, 3], [4]], pad_token_id=0)
    ref = generate(model, prompt, attention_mask=mask, max_new_tokens=2)
    out = generate(model, prompt.masked_fill(mask == 0, -100), attention_mask=mask, max_new_tokens=2)
    assert torch.equal(out[:, 3:], ref[:, 3:])


def test_input_ids_of_the_wrong_type_or_shape_are_rejected(model):
    with pytest.raises(ValueError, match="input_ids: expected an int64 tensor"):
        generate(model, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="input_ids: expected shape \\(batch, prompt_len\\)"):
        generate(model, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids: expected an int64 tensor"):
        generate(model, [[1, 2, 3]])


def test_bad_attention_masks_are_rejected(model):
    prompt = ids(model, 2, 4)
    with pytest.raises(ValueError, match=r"attention_mask: expected a tensor of shape \(2, 4\)"):
        generate(model, prompt, attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="expected left padding .* rows \\[0\\]"):
        generate(model, prompt, attention_mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="0/1"):
        generate(model, prompt, attention_mask=torch.full((2, 4), 2))


def test_total_length_beyond_the_attention_cache_is_rejected_before_generating(model):
    prompt = ids(model, 1, 10)
    with pytest.raises(ValueError, match=r"max_cache_len: the attention KV caches hold 12 positions, but "
                                         r"prompt_len \+ max_new_tokens - 1 = 10 \+ 4 - 1 = 13"):
        generate(model, prompt, max_new_tokens=4, max_cache_len=12)
    out = generate(model, prompt, max_new_tokens=3, max_cache_len=12)  # exactly enough: the last token is not fed
    assert out.shape == (1, 13)
