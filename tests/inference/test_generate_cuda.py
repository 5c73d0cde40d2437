"""Generation on a CUDA device: cached decode equals the full forward (float32), bfloat16 decode stays within a
stated multiple of the bfloat16 full forward's own error against float64, batched equals alone, seeds repeat."""

from __future__ import annotations

import pytest
import torch

from ssmkit.inference import generate, generate_steps, left_pad
from tests.compare import assert_close, errors
from tests.inference.models import CONFIGS, random_ids, tiny_model

pytestmark = pytest.mark.gpu
CUDA = "cuda"


def steps_and_tokens(model, prompt, **kwargs):
    steps = list(generate_steps(model, prompt, **kwargs))
    return steps, torch.cat([prompt, torch.stack([s.tokens for s in steps], dim=1)], dim=1)


# batch 1: one-row GEMVs (the norm, in_proj and the conv step in one launch); batch 2: cuBLAS and separate launches
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cuda_cached_decode_equals_full_forward_in_float32(name, batch):
    model = tiny_model(name, torch.float32).to(CUDA)
    prompt = random_ids(model.config.vocab_size, batch, 11).to(CUDA)
    steps, tokens = steps_and_tokens(model, prompt, max_new_tokens=9, temperature=1.0, seed=0)
    with torch.no_grad():
        full = model.eval()(tokens)[:, 10:-1]
    # float32 table entry; TF32 matmuls would exceed it, so the test also pins them off.
    assert not torch.backends.cuda.matmul.allow_tf32
    assert_close(torch.stack([s.logits for s in steps], dim=1), full, name=f"{name} cuda step logits")


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cuda_bfloat16_decode_error_is_within_twice_the_full_forward_error(name, batch):
    """bf16 decode and bf16 full forward round differently, so they are compared with a float64 full forward on
    the same tokens: the decode's error may be at most 2x the full forward's own error (plus one bf16 ulp of
    the logits' scale for near-exact cases)."""
    model = tiny_model(name, torch.float64)
    prompt = random_ids(model.config.vocab_size, batch, 11)
    bf16 = tiny_model(name, torch.bfloat16).to(CUDA)
    steps, tokens = steps_and_tokens(bf16, prompt.to(CUDA), max_new_tokens=9)
    with torch.no_grad():
        exact = model.eval()(tokens.cpu())[:, 10:-1]
        full_bf16 = bf16.eval()(tokens)[:, 10:-1].cpu()
    cached = torch.stack([s.logits for s in steps], dim=1).cpu()
    rel_full, _, scale = errors(full_bf16, exact)
    rel_cached, _, _ = errors(cached, exact)
    assert rel_cached <= 2 * rel_full + 2**-8, f"{name}: decode rel err {rel_cached:.2e} vs full {rel_full:.2e}"


@pytest.mark.parametrize("name", ["mamba2", "hybrid-moe", "jamba-like", "llama"])
def test_cuda_left_padded_batch_equals_each_prompt_alone(name):
    model = tiny_model(name, torch.float32).to(CUDA)
    prompts = [random_ids(model.config.vocab_size, n, seed=n).tolist() for n in (1, 9, 4)]
    ids, mask = left_pad(prompts, device=CUDA)
    batched = list(generate_steps(model, ids, attention_mask=mask, max_new_tokens=5))
    for i, p in enumerate(prompts):
        alone = list(generate_steps(model, torch.tensor([p], device=CUDA), max_new_tokens=5))
        assert torch.equal(torch.stack([s.tokens[i] for s in batched]), torch.stack([s.tokens[0] for s in alone]))
        assert_close(torch.stack([s.logits[i] for s in batched]), torch.stack([s.logits[0] for s in alone]),
                     name=f"{name} row {i}")


def test_cuda_seeded_sampling_repeats():
    model = tiny_model("hybrid-moe", torch.float32).to(CUDA)
    prompt = random_ids(model.config.vocab_size, 2, 5).to(CUDA)
    kwargs = dict(max_new_tokens=12, temperature=1.2, top_k=40, top_p=0.9)
    a = generate(model, prompt, seed=3, **kwargs)
    assert a.device.type == "cuda"
    assert torch.equal(a, generate(model, prompt, seed=3, **kwargs))
    assert not torch.equal(a, generate(model, prompt, seed=4, **kwargs))
