"""ModelConfig checks name the field, the value and what is expected; presets and hybrid patterns."""

from __future__ import annotations

import pytest
import torch

from ssmkit.models import PRESETS, LanguageModel, ModelConfig, hybrid_pattern


@pytest.mark.parametrize("fields, message", [
    (dict(mixers="mamba2", d_model=24, mamba2_headdim=20),
     r"mamba2_headdim: d_inner = mamba2_expand \* d_model = 48 must be divisible by mamba2_headdim, got "
     r"mamba2_headdim=20"),
    (dict(mixers="mamba2", d_model=32, mamba2_headdim=16, mamba2_ngroups=3),
     r"mamba2_ngroups: nheads = 4 must be divisible by mamba2_ngroups, got mamba2_ngroups=3"),
    (dict(mixers="attention", n_heads=6, n_kv_heads=4), r"n_kv_heads: n_heads = 6 must be divisible"),
    (dict(mixers="attention", d_model=30, n_heads=4), r"n_heads: d_model = 30 must be divisible by n_heads"),
    (dict(mixers=["mamba", "rnn"]), r"mixers\[1\]: expected one of .*, got 'rnn'"),
    (dict(n_layers=3, mixers=["mamba", "mamba"]), r"mixers: expected 3 entries \(n_layers\), got 2"),
    (dict(feed_forwards="moe", n_experts=2, moe_top_k=3), r"moe_top_k: expected at most n_experts = 2, got 3"),
    (dict(feed_forwards="moe", mlp_activation="gelu"), r"mlp_activation: MoE experts are SwiGLU"),
    (dict(mixers="mamba2", mamba2_dt_limit=(0.1, 0.01)), r"mamba2_dt_limit: expected \(lo, hi\)"),
    (dict(d_model=0), r"d_model: expected a positive int, got 0"),
    (dict(mixers="attention", n_heads=2, d_model=8, partial_rotary_factor=0.25),
     r"partial_rotary_factor: .* got 0.25 -> 1"),
])
def test_inconsistent_config_names_field_value_and_expectation(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def test_derived_fields():
    cfg = ModelConfig(d_model=40, mixers=["mamba", "mamba2", "attention"], n_layers=3, feed_forwards="mlp",
                      n_heads=5, mamba2_headdim=16, mamba2_ngroups=5)
    assert cfg.mamba_dt_rank == 3 and cfg.mamba_d_inner == 80
    assert (cfg.mamba2_nheads, cfg.mamba2_conv_dim, cfg.mamba2_norm_group_size) == (5, 80 + 2 * 5 * 128, 16)
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.rotary_dim, cfg.d_ff) == (5, 8, 8, 128)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_hybrid_pattern_places_attention_like_jamba_and_moe_every_k():
    p = hybrid_pattern(8, attn_share=1 / 8, moe_every=2)
    assert [i for i, m in enumerate(p["mixers"]) if m == "attention"] == [4]  # Jamba: period 8, offset 4
    assert [i for i, f in enumerate(p["feed_forwards"]) if f == "moe"] == [1, 3, 5, 7]
    p = hybrid_pattern(24, attn_share=0.1)
    assert [i for i, m in enumerate(p["mixers"]) if m == "attention"] == [6, 18]
    assert set(hybrid_pattern(5, attn_share=0.0, ffn=None)["feed_forwards"]) == {None}
    with pytest.raises(ValueError, match="attn_share"):
        hybrid_pattern(4, attn_share=1.5)


SIZE_CLASS = {"130m": (100e6, 180e6), "125m": (100e6, 180e6), "370m": (300e6, 450e6), "350m": (300e6, 450e6),
              "1.3b": (1.1e9, 1.6e9), "1.4b": (1.1e9, 1.6e9)}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_at_their_size_class(name):
    with torch.device("meta"):
        model = LanguageModel(ModelConfig.from_name(name))
    n = sum(p.numel() for p in model.parameters())
    size = name.rsplit("-", 1)[-1]
    if size in SIZE_CLASS:
        lo, hi = SIZE_CLASS[size]
        assert lo <= n <= hi, f"{name}: {n / 1e6:.0f}M parameters"
    with pytest.raises(ValueError, match="name: expected one of"):
        ModelConfig.from_name("gpt-5")
