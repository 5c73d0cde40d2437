"""Tiny models of every family for the generation tests: the presets plus awkward configs (odd sizes, ngroups > 1,
chunk sizes that do not divide the prompt, partial RoPE, no RoPE, Jamba-like and all-mixer hybrids with MoE)."""

from __future__ import annotations

import torch

from ssmkit.models import LanguageModel, ModelConfig

CONFIGS = {
    "mamba": ModelConfig.from_name("tiny-mamba"),
    "mamba2": ModelConfig.from_name("tiny-mamba2"),
    "mamba2-groups-odd": ModelConfig(vocab_size=61, d_model=24, n_layers=2, mixers="mamba2", mamba2_d_state=5,
                                     mamba2_headdim=8, mamba2_ngroups=2, mamba2_chunk_size=5),
    "llama": ModelConfig.from_name("tiny-llama"),
    "llama-partial-rope-bias": ModelConfig(vocab_size=53, d_model=24, n_layers=2, mixers="attention",
                                           feed_forwards="mlp", n_heads=3, n_kv_heads=1, head_dim=10,
                                           partial_rotary_factor=0.4, attn_bias=True, mlp_bias=True, d_ff=36),
    "s4": ModelConfig.from_name("tiny-s4"),
    "hybrid-moe": ModelConfig.from_name("tiny-hybrid-moe"),
    "jamba-like": ModelConfig(vocab_size=47, d_model=16, n_layers=3, mixers=["mamba", "attention", "mamba"],
                              feed_forwards=["mlp", "moe", "moe"], use_rope=False, mamba_inner_norms=True,
                              mamba_d_state=4, mamba_d_conv=3, n_heads=4, n_kv_heads=2, d_ff=24, n_experts=4,
                              moe_top_k=2),
    "all-mixers-moe": ModelConfig(vocab_size=50, d_model=16, n_layers=4, mixers=["s4", "mamba", "attention", "mamba2"],
                                  feed_forwards=["moe", None, "mlp", "moe"], s4_d_state=6, mamba_d_state=3,
                                  mamba2_d_state=4, mamba2_headdim=8, mamba2_chunk_size=4, n_heads=2, d_ff=20,
                                  n_experts=3, moe_top_k=2, moe_renormalize=True, moe_capacity_factor=1.0),
}
SSM_FAMILIES = ("mamba", "mamba2", "s4")


def tiny_model(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> LanguageModel:
    """CONFIGS[name] with every parameter perturbed, so no weight keeps a value (ones, zeros) that hides a bug and
    the logits spread enough for sampling to matter. Left in training mode: generate must switch to eval itself."""
    torch.manual_seed(seed)
    model = LanguageModel(CONFIGS[name])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.lm_head.weight.mul_(10.0)
    return model.to(dtype)


def random_ids(vocab: int, *shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def check_decoder_follows_the_dynamic_step(model, decoder, prompt: torch.Tensor, new_ids: torch.Tensor,
                                           label: str) -> None:
    """Prefills `prompt` into the GraphedDecoder and into an eager cache, then feeds new_ids (batch, n) one
    column at a time: every decoder step's logits must equal the dynamic model.step's (assert_close)."""
    from ssmkit.inference import allocate_cache, prefill
    from tests.compare import assert_close

    batch, n = new_ids.shape
    decoder.reset()
    prefill(model, prompt, decoder.state)
    decoder.start(prompt.shape[1])
    eager = allocate_cache(model, batch, prompt.shape[1] + n)
    prefill(model, prompt, eager)
    with torch.no_grad():
        for t in range(n):
            assert_close(decoder.step(new_ids[:, t]), model.step(new_ids[:, t], eager), name=f"{label} step {t}")
