"""Checkpoints written by transformers load in ssmkit with the same logits, and the other way round."""

from __future__ import annotations

import warnings

import pytest
import torch

from ssmkit.io import load_pretrained, save_pretrained
from ssmkit.models import LanguageModel, ModelConfig, hybrid_pattern
from tests.compare import assert_close
from tests.io.hf_models import HF_CONFIGS, hf_logits, make_hf_model, transformers

SEQLEN = 19  # not a multiple of any chunk size used


def _ids(vocab: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, SEQLEN), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("key", sorted(HF_CONFIGS))
def test_transformers_checkpoint_loads_with_equal_logits(key, tmp_path):
    hf = make_hf_model(key)
    hf.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)
    ids = _ids(hf.config.vocab_size)
    with torch.no_grad():
        ours = model(ids)
    assert_close(ours, hf_logits(hf, ids), name=f"{key} logits")


def test_sharded_transformers_checkpoint_loads(tmp_path):
    hf = make_hf_model("jamba-moe")
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ids = _ids(hf.config.vocab_size)
    with torch.no_grad():
        assert_close(load_pretrained(tmp_path)(ids), hf_logits(hf, ids), name="sharded jamba logits")


OURS = {
    "mamba": dict(vocab_size=33, d_model=20, n_layers=2, mixers="mamba", mamba_d_state=4, tie_embeddings=True,
                  residual_in_fp32=True),
    "mamba2": dict(vocab_size=33, d_model=24, n_layers=2, mixers="mamba2", mamba2_d_state=5, mamba2_headdim=12,
                   mamba2_ngroups=2, mamba2_chunk_size=8),
    "llama": dict(vocab_size=33, d_model=24, n_layers=2, mixers="attention", feed_forwards="mlp", n_heads=4,
                  n_kv_heads=2, d_ff=40),
    "jamba": dict(vocab_size=33, d_model=16, **hybrid_pattern(4, 0.25, moe_every=2, ssm="mamba"), n_heads=4,
                  n_kv_heads=2, d_ff=24, n_experts=4, moe_top_k=2, use_rope=False, mamba_inner_norms=True,
                  mamba_d_state=4, norm_eps=1e-6),
    "bamba": dict(vocab_size=33, d_model=16, n_layers=3, mixers=["mamba2", "attention", "mamba2"],
                  feed_forwards="mlp", n_heads=4, n_kv_heads=2, d_ff=24, partial_rotary_factor=0.5,
                  mamba2_d_state=4, mamba2_headdim=8, mamba2_ngroups=2, mamba2_chunk_size=8),
}


def _random_model(fields: dict) -> LanguageModel:
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(**fields)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("family", sorted(OURS))
def test_ssmkit_checkpoint_loads_in_transformers_with_equal_logits(family, tmp_path):
    model = _random_model(OURS[family])
    assert save_pretrained(model, tmp_path) == family
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert hf.config.model_type == family
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert_close(model(ids), hf_logits(hf, ids), name=f"{family} logits")


def test_sharded_ssmkit_checkpoint_round_trips(tmp_path):
    model = _random_model(OURS["jamba"])
    save_pretrained(model, tmp_path, max_shard_size=8_000)
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        expected = model(ids)
        assert_close(load_pretrained(tmp_path)(ids), expected, name="ssmkit reload")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert_close(hf_logits(hf, ids), expected, name="transformers reload")


def test_pattern_without_transformers_family_round_trips_as_ssmkit(tmp_path):
    fields = dict(vocab_size=33, d_model=16, **hybrid_pattern(3, 0.34, moe_every=3), n_heads=2, d_ff=24,
                  n_experts=3, moe_top_k=1, mamba2_d_state=4, mamba2_headdim=8, mamba2_chunk_size=4)
    model = _random_model(fields)
    with torch.no_grad():
        model.layers[2].ff.router_bias.copy_(torch.tensor([0.5, -0.5, 0.0]))
    assert save_pretrained(model, tmp_path) == "ssmkit"
    loaded = load_pretrained(tmp_path)
    ids = _ids(33)
    with torch.no_grad():
        assert_close(loaded(ids), model(ids), name="ssmkit-format reload")
    assert torch.equal(loaded.layers[2].ff.router_bias, model.layers[2].ff.router_bias)


def test_load_pretrained_casts_to_requested_dtype(tmp_path):
    model = _random_model(OURS["mamba2"])
    save_pretrained(model, tmp_path)
    loaded = load_pretrained(tmp_path, dtype=torch.float64)
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    ids = _ids(33)
    with torch.no_grad():
        assert_close(loaded(ids).float(), model(ids), dtype=torch.float32, name="float64 reload")
