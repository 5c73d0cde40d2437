"""The decode cache of a LanguageModel: one state per layer, allocated once before prefill and updated in place.

SSM layers (Mamba, Mamba-2, S4) hold a conv state and an SSM state whose sizes do not depend on the context length;
attention layers hold a KV cache of max_len positions, optionally stored as int8 (per-token, per-head scales).
"""

from __future__ import annotations

import dataclasses

import torch

from ssmkit.ops.attention.kv_cache import KVCache


def allocate_cache(model, batch: int, max_len: int, *, dtype: torch.dtype | None = None, device=None,
                   kv_dtype: torch.dtype | None = None) -> list:
    """A list of per-layer states for `model` (LanguageModel), as model.allocate_state returns it.

    Args:
        batch, max_len: rows, and positions the attention layers can hold (prompt plus new tokens).
        dtype, device: default to those of the model's parameters.
        kv_dtype: storage of the attention layers' KV caches (None = dtype; torch.int8 = quantized).
    """
    if kv_dtype is None:
        return model.allocate_state(batch, max_len, dtype, device)
    if not isinstance(kv_dtype, torch.dtype) or not (kv_dtype.is_floating_point or kv_dtype == torch.int8):
        raise ValueError(f"kv_dtype: expected None, a floating torch.dtype or torch.int8, got {kv_dtype!r}")
    if batch < 1 or max_len < 1:
        raise ValueError(f"batch, max_len: expected >= 1, got batch={batch}, max_len={max_len}")
    ref = model.embeddings.weight
    dtype = ref.dtype if dtype is None else dtype
    device = ref.device if device is None else device
    # Only attention layers take kv_dtype; the others are allocated exactly as model.allocate_state does.
    return [layer.mixer.allocate_state(batch, max_len, dtype, device, kv_dtype=kv_dtype)
            if layer.mixer_kind == "attention" else layer.allocate_state(batch, max_len, dtype, device)
            for layer in model.layers]


def attention_capacity(state: list) -> int | None:
    """The number of positions the attention layers of `state` can hold (None without attention layers)."""
    caps = [kv.max_len for kv in _kv_caches(state)]
    return min(caps) if caps else None


def cache_tensors(state: list) -> dict[str, torch.Tensor]:
    """Every tensor of the cache by name, e.g. "layers.0.ssm_state", "layers.3.kv.k" (for sizes and tests)."""
    out = {}
    for i, layer_state in enumerate(state):
        out.update(_tensors(layer_state, f"layers.{i}"))
    return out


def cache_nbytes(state: list) -> dict[str, int]:
    """Bytes held by the cache, split into "ssm" (conv and SSM states: fixed size) and "kv" (attention caches)."""
    totals = {"ssm": 0, "kv": 0}
    for name, t in cache_tensors(state).items():
        totals["kv" if ".kv." in name or ".key_mask" in name else "ssm"] += t.numel() * t.element_size()
    return totals


def _tensors(obj, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, torch.Tensor):
            out[f"{prefix}.{f.name}"] = value
        elif dataclasses.is_dataclass(value):
            out.update(_tensors(value, f"{prefix}.{f.name}"))
    return out


def _kv_caches(state: list) -> list[KVCache]:
    return [s.kv for s in state if isinstance(getattr(s, "kv", None), KVCache)]
