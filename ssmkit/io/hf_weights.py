"""Tensor names between ssmkit's state_dict and the Hugging Face families: renaming, plus MoE expert fusion.

ssmkit names: embeddings, layers.{i}.norm / mixer / ff_norm / ff, norm_f, lm_head. Mixer and MLP parameter
names already equal transformers' (in_proj, conv1d, q_proj, gate_proj, ...), so only the prefixes change. MoE
experts are fused 3-D tensors in ssmkit; transformers 5.x writes them per expert (experts.{e}.gate_proj.weight ...)
and ssmkit reads both that and the fused layout.
"""

from __future__ import annotations

import re

import torch

from ssmkit.models.config import ModelConfig

# (ssmkit prefix -> HF prefix) per family; a layer's mixer prefix depends on its kind.
_BACKBONE = {"embeddings.": "backbone.embeddings.", "norm_f.": "backbone.norm_f.", "layers.": "backbone.layers."}
_MODEL = {"embeddings.": "model.embed_tokens.", "norm_f.": "model.final_layernorm."}
_LAYER = {
    "llama": {"norm.": "input_layernorm.", "mixer.": "self_attn.", "ff_norm.": "post_attention_layernorm.",
              "ff.": "mlp."},
    "hybrid": {"norm.": "input_layernorm.", "ff_norm.": "pre_ff_layernorm.", "ff.": "feed_forward."},
}
_EXPERT = re.compile(r"^(?P<layer>.+)\.experts\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")
# Names a reader may drop: rotary tables some exporters store, and the legacy Mamba embedding name.
_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.inv_freq)$")


def to_hf_name(model_type: str, config: ModelConfig, name: str) -> str:
    """ssmkit state_dict name -> HF name (for everything but fused experts)."""
    if model_type == "ssmkit" or name.startswith("lm_head."):
        return name
    if model_type in ("mamba", "mamba2"):
        return _swap_prefix(name, _BACKBONE)
    if model_type == "llama" and name.startswith("norm_f."):
        return "model.norm." + name[len("norm_f."):]
    m = re.match(r"^layers\.(\d+)\.(.*)$", name)
    if m is None:
        return _swap_prefix(name, _MODEL)
    i, rest = int(m.group(1)), m.group(2)
    rules = dict(_LAYER["llama" if model_type == "llama" else "hybrid"])
    rules.setdefault("mixer.", "self_attn." if config.mixers[i] == "attention" else "mamba.")
    return f"model.layers.{i}." + _swap_prefix(rest, rules)


def hf_to_ssmkit(model_type: str, config: ModelConfig, tensors: dict, expected: dict) -> dict:
    """Maps checkpoint tensors onto ssmkit names and checks them against `expected` {name: shape}.

    Raises ValueError naming the tensor for an unexpected name, a missing tensor, or a shape mismatch.
    Returns {ssmkit name: tensor}; router_bias buffers (not part of HF formats) are filled with zeros.
    """
    tensors = dict(tensors)
    if model_type == "mamba" and "backbone.embedding.weight" in tensors:  # name used by early checkpoints
        tensors["backbone.embeddings.weight"] = tensors.pop("backbone.embedding.weight")
    by_hf = {to_hf_name(model_type, config, name): name for name in expected}
    out, experts = {}, {}
    for hf_name, t in tensors.items():
        if hf_name in by_hf:
            out[by_hf[hf_name]] = t
        elif _EXPERT.match(hf_name):
            m = _EXPERT.match(hf_name)
            experts.setdefault(m.group("layer"), {})[(int(m.group("e")), m.group("proj"))] = (hf_name, t)
        elif not _IGNORED.search(hf_name) and not (hf_name == "lm_head.weight" and config.tie_embeddings):
            raise ValueError(f"unexpected tensor {hf_name!r} in the {model_type} checkpoint (no ssmkit parameter "
                             f"maps to it)")
    by_hf_layer = {to_hf_name(model_type, config, n)[: -len(".experts.gate_up_proj")]: n[: -len(".gate_up_proj")]
                   for n in expected if n.endswith(".experts.gate_up_proj")}
    for hf_layer, parts in experts.items():
        if hf_layer not in by_hf_layer:
            raise ValueError(f"unexpected tensor {next(iter(parts.values()))[0]!r}: layer {hf_layer!r} has no MoE "
                             f"in this config")
        out.update(_fuse_experts(by_hf_layer[hf_layer], hf_layer, parts, config.n_experts))
    if config.tie_embeddings and "embeddings.weight" in out:
        out["lm_head.weight"] = out["embeddings.weight"]
    for name, shape in expected.items():
        if name not in out and name.endswith("router_bias"):
            out[name] = torch.zeros(shape)
        elif name not in out:
            raise ValueError(f"missing tensor {to_hf_name(model_type, config, name)!r} (ssmkit {name!r}, shape "
                             f"{tuple(shape)}) in the {model_type} checkpoint")
        elif tuple(out[name].shape) != tuple(shape):
            raise ValueError(f"tensor {to_hf_name(model_type, config, name)!r}: checkpoint shape "
                             f"{tuple(out[name].shape)}, expected {tuple(shape)} for this config")
    return out


def ssmkit_to_hf(model_type: str, config: ModelConfig, state_dict: dict) -> dict:
    """ssmkit state_dict -> {HF name: tensor}, experts written per expert as transformers 5.x saves them.

    The tied lm_head and the router_bias buffers are left out (HF formats hold neither).
    """
    out = {}
    for name, t in state_dict.items():
        if name.endswith("router_bias") and model_type != "ssmkit":
            continue
        if name == "lm_head.weight" and config.tie_embeddings:
            continue
        if model_type != "ssmkit" and name.endswith(".experts.gate_up_proj"):
            hf_layer = to_hf_name(model_type, config, name)[: -len(".experts.gate_up_proj")]
            gate, up = t.chunk(2, dim=1)  # (E, d_ff, d_model) each: gate rows first
            for e in range(t.shape[0]):
                out[f"{hf_layer}.experts.{e}.gate_proj.weight"] = gate[e]
                out[f"{hf_layer}.experts.{e}.up_proj.weight"] = up[e]
        elif model_type != "ssmkit" and name.endswith(".experts.down_proj"):
            hf_layer = to_hf_name(model_type, config, name)[: -len(".experts.down_proj")]
            for e in range(t.shape[0]):
                out[f"{hf_layer}.experts.{e}.down_proj.weight"] = t[e]
        else:
            out[to_hf_name(model_type, config, name)] = t
    return out


def _fuse_experts(ours: str, hf_layer: str, parts: dict, n_experts: int) -> dict:
    """Per-expert (d_ff, d_model) gate/up and (d_model, d_ff) down -> fused (E, 2 d_ff, d_model), (E, d_model, d_ff)."""
    def get(e, proj):
        if (e, proj) not in parts:
            raise ValueError(f"missing tensor '{hf_layer}.experts.{e}.{proj}.weight' (expected {n_experts} experts)")
        return parts[(e, proj)][1]

    extra = sorted(e for e, _ in parts if e >= n_experts)
    if extra:
        raise ValueError(f"unexpected tensor '{hf_layer}.experts.{extra[0]}...': the config has {n_experts} experts")
    gate_up = torch.stack([torch.cat([get(e, "gate_proj"), get(e, "up_proj")]) for e in range(n_experts)])
    down = torch.stack([get(e, "down_proj") for e in range(n_experts)])
    return {f"{ours}.gate_up_proj": gate_up, f"{ours}.down_proj": down}


def _swap_prefix(name: str, rules: dict) -> str:
    for src, dst in rules.items():
        if name.startswith(src):
            return dst + name[len(src):]
    return name
