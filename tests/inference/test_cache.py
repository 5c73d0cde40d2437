"""The decode cache: SSM states have the same sizes for any context length, attention KV caches grow with it; the
int8 KV cache stores int8 with per-(token, head) scales and decodes like a one-shot pass over the same int8 cache."""

from __future__ import annotations

import pytest
import torch

from ssmkit.inference import allocate_cache, cache_nbytes, cache_tensors, generate, generate_steps, prefill
from tests.compare import assert_close
from tests.inference.models import CONFIGS, SSM_FAMILIES, random_ids, tiny_model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ssm_cache_sizes_do_not_depend_on_context_length(name):
    model = tiny_model(name, torch.float32)
    short, long = cache_tensors(allocate_cache(model, 2, 16)), cache_tensors(allocate_cache(model, 2, 4096))
    assert short.keys() == long.keys()
    for key in short:
        if ".kv." in key or key.endswith(".key_mask"):  # attention: one slot per position
            assert long[key].shape[1] == 4096 and short[key].shape[1] == 16, key
        else:
            assert short[key].shape == long[key].shape, f"{key}: {short[key].shape} vs {long[key].shape}"
    short_bytes, long_bytes = cache_nbytes(allocate_cache(model, 2, 16)), cache_nbytes(allocate_cache(model, 2, 4096))
    assert short_bytes["ssm"] == long_bytes["ssm"]
    if "attention" not in model.config.mixers:
        assert short_bytes["kv"] == long_bytes["kv"] == 0


@pytest.mark.parametrize("name", SSM_FAMILIES)
def test_pure_ssm_models_generate_past_any_max_cache_len(name):
    model = tiny_model(name)
    prompt = random_ids(model.config.vocab_size, 1, 12)
    ref = generate(model, prompt, max_new_tokens=6)
    assert torch.equal(generate(model, prompt, max_new_tokens=6, max_cache_len=1), ref)  # nothing to size


def test_int8_kv_cache_stores_int8_and_a_quarter_of_the_float32_bytes_plus_scales():
    model = tiny_model("llama", torch.float32)
    cfg = model.config
    plain = cache_nbytes(allocate_cache(model, 2, 64))["kv"]
    int8 = allocate_cache(model, 2, 64, kv_dtype=torch.int8)
    kv = int8[0].kv
    assert kv.k.dtype == torch.int8 and kv.v.dtype == torch.int8 and kv.k_scale.dtype == torch.float32
    slots = cfg.n_layers * 2 * 64 * cfg.n_kv_heads  # layers x batch x positions x kv heads
    mask_bytes = cfg.n_layers * 2 * 64  # the bool key masks
    assert plain == 2 * slots * cfg.head_dim * 4 + mask_bytes
    assert cache_nbytes(int8)["kv"] == 2 * slots * (cfg.head_dim * 1 + 4) + mask_bytes


@pytest.mark.parametrize("name", ["llama", "hybrid-moe", "jamba-like"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_int8_kv_decode_equals_one_shot_prefill_over_the_int8_cache(name, dtype):
    """Quantization is per (token, head), so writing the keys one step at a time or all at once stores the same
    int8 values: step logits must equal one pass over prompt + new tokens through an int8 cache."""
    model = tiny_model(name, dtype)
    prompt = random_ids(model.config.vocab_size, 2, 9)
    steps = list(generate_steps(model, prompt, max_new_tokens=7, temperature=1.0, seed=2, kv_dtype=torch.int8))
    tokens = torch.cat([prompt, torch.stack([s.tokens for s in steps], dim=1)], dim=1)
    state = allocate_cache(model, 2, tokens.shape[1], kv_dtype=torch.int8)
    with torch.no_grad():
        full = model.eval()(tokens, state)
    assert_close(torch.stack([s.logits for s in steps], dim=1), full[:, 8:-1], name=f"{name} int8 step logits")


def test_int8_kv_logits_stay_close_to_float_kv_logits():
    model = tiny_model("llama", torch.float64)
    prompt = random_ids(model.config.vocab_size, 2, 30)
    ref = prefill(model.eval(), prompt, allocate_cache(model, 2, 30))
    got = prefill(model, prompt, allocate_cache(model, 2, 30, kv_dtype=torch.int8))
    # Rounding to a step of absmax / 127 leaves a uniform error of RMS step / sqrt(12) = absmax * 2.3e-3 per
    # entry, about 6e-3 of the RMS of a 16-wide head (absmax ~ 2.5 RMS). K and V of two layers add four such
    # independent relative errors, ~1.2e-2 in quadrature, and the layers after attention keep relative sizes
    # (measured: 9.4e-3). 3e-2 leaves a factor 2.5 and still catches a scale bug (a wrong scale moves logits by O(1)).
    assert_close(got, ref, tol=(3e-2, 5e-2), name="int8 vs float KV logits")
    assert not torch.equal(got, ref)  # the int8 path did run


def test_allocate_cache_rejects_a_bad_kv_dtype():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="kv_dtype"):
        allocate_cache(model, 1, 8, kv_dtype=torch.int32)
