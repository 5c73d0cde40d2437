"""Hugging Face config.json <-> ModelConfig for the families ssmkit reads and writes.

Families: mamba (MambaForCausalLM), mamba2 (Mamba2ForCausalLM), jamba (JambaForCausalLM), bamba
(BambaForCausalLM), llama (LlamaForCausalLM), and "ssmkit" (ModelConfig's own fields, for any pattern).
Field meanings follow transformers 5.x (configuration_<family>.py); older spellings (rope_theta at top level,
torch_dtype) are read too.
"""

from __future__ import annotations

import math

from ssmkit.models.config import ModelConfig

SUPPORTED_MODEL_TYPES = ("mamba", "mamba2", "jamba", "bamba", "llama", "ssmkit")
ARCHITECTURES = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM", "jamba": "JambaForCausalLM",
                 "bamba": "BambaForCausalLM", "llama": "LlamaForCausalLM"}
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def config_from_hf(hf: dict) -> tuple[str, ModelConfig]:
    """A parsed config.json -> (model_type, ModelConfig). Raises ValueError for unknown or unsupported configs."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type: expected one of {list(SUPPORTED_MODEL_TYPES)}, got {model_type!r}")
    hf = {k: _decode_float(v) for k, v in hf.items()}
    if model_type == "ssmkit":
        fields = {k: v for k, v in hf.items() if k not in ("model_type", "dtype", "architectures")}
        return model_type, ModelConfig.from_dict(fields)
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act: ssmkit supports 'silu' for {model_type}, got {hf['hidden_act']!r}")
    reader = {"mamba": _mamba_from_hf, "mamba2": _mamba2_from_hf, "jamba": _jamba_from_hf,
              "bamba": _bamba_from_hf, "llama": _llama_from_hf}[model_type]
    fields = reader(hf)
    fields.update({k: _first_id(hf.get(k)) for k in _TOKEN_IDS})
    try:
        return model_type, ModelConfig(**fields)
    except ValueError as err:
        raise ValueError(f"inconsistent {model_type} config.json: {err}") from None


def config_to_hf(config: ModelConfig, model_type: str) -> dict:
    """ModelConfig -> config.json fields for `model_type` (see `hf_model_type` for which one fits)."""
    if model_type == "ssmkit":
        out = {"model_type": "ssmkit", **config.to_dict()}
        out["mamba2_dt_limit"] = list(config.mamba2_dt_limit)
        return out
    writer = {"mamba": _mamba_to_hf, "mamba2": _mamba2_to_hf, "jamba": _jamba_to_hf, "bamba": _bamba_to_hf,
              "llama": _llama_to_hf}[model_type]
    out = {"model_type": model_type, "architectures": [ARCHITECTURES[model_type]],
           "vocab_size": config.vocab_size, "hidden_size": config.d_model, "num_hidden_layers": config.n_layers,
           "hidden_act": "silu", "tie_word_embeddings": config.tie_embeddings}
    out.update(writer(config))
    out.update({k: getattr(config, k) for k in _TOKEN_IDS})
    return out


def hf_model_type(config: ModelConfig) -> str:
    """The transformers family that computes exactly this model, or "ssmkit" when none does."""
    for model_type, fits in (("mamba", _fits_mamba), ("mamba2", _fits_mamba2), ("llama", _fits_llama),
                             ("jamba", _fits_jamba), ("bamba", _fits_bamba)):
        if fits(config):
            return model_type
    return "ssmkit"


# --- mamba -----------------------------------------------------------------------------------------------------
def _mamba_from_hf(hf: dict) -> dict:
    rank = hf.get("time_step_rank", "auto")
    return dict(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
                mixers="mamba", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                tie_embeddings=hf.get("tie_word_embeddings", True),
                residual_in_fp32=hf.get("residual_in_fp32", True), mamba_d_state=hf.get("state_size", 16),
                mamba_d_conv=hf.get("conv_kernel", 4), mamba_expand=hf.get("expand", 2),
                mamba_dt_rank=None if rank == "auto" else rank, mamba_conv_bias=hf.get("use_conv_bias", True),
                mamba_proj_bias=hf.get("use_bias", False))


def _mamba_to_hf(c: ModelConfig) -> dict:
    return dict(state_size=c.mamba_d_state, layer_norm_epsilon=c.norm_eps, expand=c.mamba_expand,
                conv_kernel=c.mamba_d_conv, use_bias=c.mamba_proj_bias, use_conv_bias=c.mamba_conv_bias,
                time_step_rank=c.mamba_dt_rank, residual_in_fp32=c.residual_in_fp32)


def _fits_mamba(c: ModelConfig) -> bool:
    return set(c.mixers) == {"mamba"} and not any(c.feed_forwards) and not c.mamba_inner_norms


# --- mamba2 ----------------------------------------------------------------------------------------------------
def _mamba2_from_hf(hf: dict) -> dict:
    hidden, expand = hf["hidden_size"], hf.get("expand", 2)
    heads, head_dim = hf.get("num_heads", 128), hf.get("head_dim", 64)
    if heads * head_dim != expand * hidden:
        raise ValueError(f"inconsistent mamba2 config.json: num_heads * head_dim = {heads} * {head_dim} = "
                         f"{heads * head_dim}, expected expand * hidden_size = {expand * hidden}")
    return dict(vocab_size=hf["vocab_size"], d_model=hidden, n_layers=hf["num_hidden_layers"], mixers="mamba2",
                norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=hf.get("tie_word_embeddings", False),
                residual_in_fp32=hf.get("residual_in_fp32", True), mamba2_d_state=hf.get("state_size", 128),
                mamba2_headdim=head_dim, mamba2_ngroups=hf.get("n_groups", 8),
                mamba2_chunk_size=hf.get("chunk_size", 256), mamba2_d_conv=hf.get("conv_kernel", 4),
                mamba2_expand=expand, mamba2_conv_bias=hf.get("use_conv_bias", True),
                mamba2_proj_bias=hf.get("use_bias", False),
                mamba2_dt_limit=tuple(hf.get("time_step_limit") or (0.0, math.inf)))


def _mamba2_to_hf(c: ModelConfig) -> dict:
    return dict(num_heads=c.mamba2_nheads, head_dim=c.mamba2_headdim, state_size=c.mamba2_d_state,
                layer_norm_epsilon=c.norm_eps, expand=c.mamba2_expand, conv_kernel=c.mamba2_d_conv,
                n_groups=c.mamba2_ngroups, use_bias=c.mamba2_proj_bias, use_conv_bias=c.mamba2_conv_bias,
                residual_in_fp32=c.residual_in_fp32, time_step_limit=list(c.mamba2_dt_limit),
                chunk_size=c.mamba2_chunk_size)


def _fits_mamba2(c: ModelConfig) -> bool:
    return set(c.mixers) == {"mamba2"} and not any(c.feed_forwards) and c.mamba2_norm_per_group


# --- llama -----------------------------------------------------------------------------------------------------
def _rope(hf: dict, model_type: str) -> tuple[float, float]:
    """(rope_theta, partial_rotary_factor) from rope_parameters (5.x) or the top-level fields (4.x)."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"rope_parameters.rope_type: ssmkit supports 'default' for {model_type}, got {rope_type!r}")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    return theta, rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))


def _attention_fields(hf: dict) -> dict:
    heads = hf["num_attention_heads"]
    return dict(n_heads=heads, n_kv_heads=hf.get("num_key_value_heads") or heads,
                attn_bias=hf.get("attention_bias", False), mlp_bias=hf.get("mlp_bias", False),
                d_ff=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
                tie_embeddings=hf.get("tie_word_embeddings", False))


def _llama_from_hf(hf: dict) -> dict:
    theta, partial = _rope(hf, "llama")
    if partial != 1.0:
        raise ValueError(f"partial_rotary_factor: llama rotates whole heads, expected 1.0, got {partial}")
    return dict(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
                mixers="attention", feed_forwards="mlp", head_dim=hf.get("head_dim"), rope_theta=theta,
                **_attention_fields(hf))


def _attention_to_hf(c: ModelConfig) -> dict:
    return dict(num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, intermediate_size=c.d_ff,
                rms_norm_eps=c.norm_eps, attention_bias=c.attn_bias, mlp_bias=c.mlp_bias)


def _llama_to_hf(c: ModelConfig) -> dict:
    return dict(**_attention_to_hf(c), head_dim=c.head_dim, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta})


def _fits_attention_ff(c: ModelConfig, ff_kinds: set) -> bool:
    return (set(c.feed_forwards) <= ff_kinds and c.mlp_activation == "swiglu" and not c.residual_in_fp32
            and not c.moe_renormalize)


def _fits_llama(c: ModelConfig) -> bool:
    return (set(c.mixers) == {"attention"} and set(c.feed_forwards) == {"mlp"} and _fits_attention_ff(c, {"mlp"})
            and c.use_rope and c.partial_rotary_factor == 1.0)


# --- jamba -----------------------------------------------------------------------------------------------------
def _periodic(n: int, period: int, offset: int) -> list[bool]:
    return [i % period == offset for i in range(n)]


def _find_period(flags: list[bool]) -> tuple[int, int] | None:
    """(period, offset) with offset < period and flags[i] == (i % period == offset), or None."""
    n = len(flags)
    if not any(flags):
        return n + 1, n  # no layer is selected
    offset = flags.index(True)
    for period in range(offset + 1, n + 1):
        if _periodic(n, period, offset) == flags:
            return period, offset
    return None


def _jamba_from_hf(hf: dict) -> dict:
    n = hf["num_hidden_layers"]
    for kind in ("attn", "expert"):
        if hf.get(f"{kind}_layer_offset", 0) >= hf.get(f"{kind}_layer_period", 1):
            raise ValueError(f"{kind}_layer_offset: expected < {kind}_layer_period "
                             f"({hf.get(f'{kind}_layer_period')}), got {hf.get(f'{kind}_layer_offset')}")
    attn = _periodic(n, hf.get("attn_layer_period", 8), hf.get("attn_layer_offset", 4))
    n_experts = hf.get("num_experts", hf.get("num_local_experts", 16))
    moe = _periodic(n, hf.get("expert_layer_period", 2), hf.get("expert_layer_offset", 1))
    rank = hf.get("mamba_dt_rank", "auto")
    return dict(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=n,
                mixers=["attention" if a else "mamba" for a in attn],
                feed_forwards=["moe" if m and n_experts > 1 else "mlp" for m in moe],
                use_rope=False, mamba_inner_norms=True, mamba_d_state=hf.get("mamba_d_state", 16),
                mamba_d_conv=hf.get("mamba_d_conv", 4), mamba_expand=hf.get("mamba_expand", 2),
                mamba_dt_rank=None if rank == "auto" else rank, mamba_conv_bias=hf.get("mamba_conv_bias", True),
                mamba_proj_bias=hf.get("mamba_proj_bias", False), n_experts=n_experts,
                moe_top_k=hf.get("num_experts_per_tok", 2), moe_aux_loss_coef=hf.get("router_aux_loss_coef", 0.001),
                **_attention_fields(hf))


def _jamba_to_hf(c: ModelConfig) -> dict:
    attn_period, attn_offset = _find_period([m == "attention" for m in c.mixers])
    moe_period, moe_offset = _find_period([f == "moe" for f in c.feed_forwards])
    has_moe = "moe" in c.feed_forwards
    return dict(**_attention_to_hf(c), attn_layer_period=attn_period, attn_layer_offset=attn_offset,
                expert_layer_period=moe_period, expert_layer_offset=moe_offset,
                num_experts=c.n_experts if has_moe else 1, num_experts_per_tok=c.moe_top_k if has_moe else 1,
                router_aux_loss_coef=c.moe_aux_loss_coef, mamba_d_state=c.mamba_d_state,
                mamba_d_conv=c.mamba_d_conv, mamba_expand=c.mamba_expand, mamba_dt_rank=c.mamba_dt_rank,
                mamba_conv_bias=c.mamba_conv_bias, mamba_proj_bias=c.mamba_proj_bias)


def _fits_jamba(c: ModelConfig) -> bool:
    return (set(c.mixers) <= {"mamba", "attention"} and None not in c.feed_forwards
            and _fits_attention_ff(c, {"mlp", "moe"}) and c.mamba_inner_norms and not c.use_rope
            and not c.attn_bias and not c.mlp_bias and _plain_heads(c)
            and _find_period([m == "attention" for m in c.mixers]) is not None
            and _find_period([f == "moe" for f in c.feed_forwards]) is not None
            and ("moe" not in c.feed_forwards or c.n_experts > 1))


# --- bamba -----------------------------------------------------------------------------------------------------
def _bamba_from_hf(hf: dict) -> dict:
    theta, _ = _rope(hf, "bamba")  # transformers' BambaConfig rotates half of each head, whatever is stored
    hidden, expand = hf["hidden_size"], hf.get("mamba_expand", 2)
    heads, head = hf.get("mamba_n_heads", 128), hf.get("mamba_d_head", "auto")
    head = expand * hidden // heads if head == "auto" else head
    if heads * head != expand * hidden:
        raise ValueError(f"inconsistent bamba config.json: mamba_n_heads * mamba_d_head = {heads} * {head}, "
                         f"expected mamba_expand * hidden_size = {expand * hidden}")
    attn = set(hf.get("attn_layer_indices") or [])
    n = hf["num_hidden_layers"]
    return dict(vocab_size=hf["vocab_size"], d_model=hidden, n_layers=n,
                mixers=["attention" if i in attn else "mamba2" for i in range(n)], feed_forwards="mlp",
                rope_theta=theta, partial_rotary_factor=0.5, mamba2_d_state=hf.get("mamba_d_state", 256),
                mamba2_headdim=head, mamba2_ngroups=hf.get("mamba_n_groups", 1),
                mamba2_chunk_size=hf.get("mamba_chunk_size", 256), mamba2_d_conv=hf.get("mamba_d_conv", 4),
                mamba2_expand=expand, mamba2_conv_bias=hf.get("mamba_conv_bias", True),
                mamba2_proj_bias=hf.get("mamba_proj_bias", False),
                mamba2_dt_limit=tuple(hf.get("time_step_limit") or (0.0, math.inf)), **_attention_fields(hf))


def _bamba_to_hf(c: ModelConfig) -> dict:
    return dict(**_attention_to_hf(c), attn_layer_indices=[i for i, m in enumerate(c.mixers) if m == "attention"],
                mamba_n_heads=c.mamba2_nheads, mamba_d_head=c.mamba2_headdim, mamba_n_groups=c.mamba2_ngroups,
                mamba_d_state=c.mamba2_d_state, mamba_d_conv=c.mamba2_d_conv, mamba_expand=c.mamba2_expand,
                mamba_chunk_size=c.mamba2_chunk_size, mamba_conv_bias=c.mamba2_conv_bias,
                mamba_proj_bias=c.mamba2_proj_bias, time_step_limit=list(c.mamba2_dt_limit),
                rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta, "partial_rotary_factor": 0.5})


def _fits_bamba(c: ModelConfig) -> bool:
    return (set(c.mixers) <= {"mamba2", "attention"} and set(c.feed_forwards) == {"mlp"}
            and _fits_attention_ff(c, {"mlp"}) and c.mamba2_norm_per_group and _plain_heads(c)
            and ("attention" not in c.mixers or (c.use_rope and c.partial_rotary_factor == 0.5)))


def _plain_heads(c: ModelConfig) -> bool:
    """Jamba and Bamba derive head_dim as hidden_size // num_attention_heads."""
    return "attention" not in c.mixers or c.head_dim * c.n_heads == c.d_model


# --- json details ----------------------------------------------------------------------------------------------
def _decode_float(v):
    """transformers 5.x writes inf as {"__float__": "Infinity"}; older files use the bare JSON `Infinity`."""
    if isinstance(v, dict) and set(v) == {"__float__"}:
        return float(v["__float__"])
    if isinstance(v, list):
        return [_decode_float(x) for x in v]
    return v


def _first_id(v):
    return v[0] if isinstance(v, list) and v else (None if isinstance(v, list) else v)
