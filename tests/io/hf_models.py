"""Tiny random transformers models for the checkpoint tests (transformers is the oracle; nothing is downloaded)."""

from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

# Several configs per family: ngroups > 1, odd sizes, biases, tied and untied heads, attention offsets, MoE.
HF_CONFIGS = {
    "mamba-tied": ("MambaConfig", dict(vocab_size=37, hidden_size=24, state_size=5, num_hidden_layers=2,
                                       conv_kernel=3, time_step_rank=3)),
    "mamba-odd-bias": ("MambaConfig", dict(vocab_size=41, hidden_size=18, state_size=3, num_hidden_layers=3,
                                           expand=3, use_bias=True, use_conv_bias=False,
                                           tie_word_embeddings=False)),
    "mamba2-groups": ("Mamba2Config", dict(vocab_size=37, hidden_size=32, num_heads=8, head_dim=8, n_groups=2,
                                           state_size=6, num_hidden_layers=2, chunk_size=8)),
    "mamba2-odd-limit": ("Mamba2Config", dict(vocab_size=29, hidden_size=20, num_heads=5, head_dim=8,
                                              n_groups=5, state_size=3, num_hidden_layers=2, chunk_size=4,
                                              use_bias=True, time_step_limit=(0.0, 0.05),
                                              tie_word_embeddings=True)),
    "llama-gqa": ("LlamaConfig", dict(vocab_size=37, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)),
    "llama-bias-headdim": ("LlamaConfig", dict(vocab_size=31, hidden_size=24, intermediate_size=36,
                                               num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
                                               head_dim=10, attention_bias=True, mlp_bias=True,
                                               tie_word_embeddings=True,
                                               rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    "jamba-moe": ("JambaConfig", dict(vocab_size=37, hidden_size=16, intermediate_size=24, num_hidden_layers=5,
                                      num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                                      num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1,
                                      attn_layer_period=3, attn_layer_offset=1, mamba_d_state=4,
                                      mamba_dt_rank=3, mamba_d_conv=3)),
    "jamba-dense-odd": ("JambaConfig", dict(vocab_size=29, hidden_size=20, intermediate_size=28,
                                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                            num_experts=1, attn_layer_period=2, attn_layer_offset=0,
                                            mamba_d_state=3, mamba_expand=3, mamba_proj_bias=True)),
    "bamba-groups": ("BambaConfig", dict(vocab_size=37, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1],
                                         mamba_n_heads=4, mamba_d_state=4, mamba_n_groups=2,
                                         mamba_chunk_size=8)),
    "bamba-offsets-odd": ("BambaConfig", dict(vocab_size=29, hidden_size=20, intermediate_size=30,
                                              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
                                              attn_layer_indices=[0, 3], mamba_n_heads=5, mamba_d_state=3,
                                              mamba_n_groups=1, mamba_chunk_size=4, mamba_proj_bias=True,
                                              time_step_limit=(0.0, 0.08))),
}


def make_hf_model(key: str, seed: int = 0):
    """A transformers CausalLM for HF_CONFIGS[key], every parameter perturbed so that no weight keeps a value
    (ones, zeros) that would hide a mapping mistake."""
    cls_name, kwargs = HF_CONFIGS[key]
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def hf_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(input_ids=input_ids, use_cache=False).logits.float()
