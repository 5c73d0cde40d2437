"""The decoders of each model, kept between generations: graphed_decoder hands out a GraphedDecoder (graphs.py)
per (batch, cache length, dtype, kv_dtype), captured on first use and marked busy until release_decoder, within a
count and an idle-memory budget per model, least recently used dropped first. Also eager_only / eager_reason, which
hold a model to the eager step while something observes its layers.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager

import torch

from .graphs import GraphedDecoder, graph_cache_len
from .module_walk import tensor_signature

MAX_GRAPHS_PER_MODEL = 4  # each holds a full decode state (KV caches included); the least recently used goes
# Idle decoders (kept for a later generation) of one model may hold at most this share of the device's memory;
# the least recently used go first. Without it a sweep to 128K kept the 32K-128K caches of batch 1 (45 GB for a
# 1.3B Transformer) while batch 16 ran out of memory on an H100.
IDLE_MEMORY_FRACTION = 1 / 8


class _Registry:
    """Decoders of each model, least recently used first, keyed by (batch, capacity, dtype, kv_dtype)."""

    def __init__(self):
        self.by_model: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.lock = threading.Lock()


_REGISTRY = _Registry()


def graphed_decoder(model, batch: int, max_len: int, *, kv_dtype: torch.dtype | None = None,
                    exact: bool = False) -> GraphedDecoder | None:
    """The model's decoder for this batch and at least max_len positions, captured on first use; None when the
    model cannot be captured (known from an earlier try) or that decoder is in use by another generation.

    max_len is rounded up by graph_cache_len unless `exact`; models without attention layers share one decoder
    per batch whatever the length. A decoder is dropped when the model's parameters were replaced (e.g. by
    .to()) since its capture; past MAX_GRAPHS_PER_MODEL decoders, or past idle_budget() bytes of idle ones, the
    least recently used idle ones go. A new decoder that runs out of memory (state or capture) drops every idle
    one and is made once more; a second out-of-memory state allocation propagates, a second out-of-memory capture
    returns None (eager this time, tried again next time).
    """
    has_attention = "attention" in model.config.mixers
    capacity = (max_len if exact else graph_cache_len(max_len)) if has_attention else 1
    key = (batch, capacity, model.embeddings.weight.dtype, kv_dtype)
    signature = tensor_signature(model)
    with _REGISTRY.lock:
        entry = _REGISTRY.by_model.setdefault(model, {"signature": signature, "decoders": OrderedDict(),
                                                      "busy": set(), "failed": None})
        if entry["signature"] != signature:
            entry.update(signature=signature, decoders=OrderedDict(), failed=None)
        if entry["failed"] is not None:
            return None
        decoders = entry["decoders"]
        decoder = decoders.get(key)
        if decoder is not None and id(decoder) in entry["busy"]:
            return None
        if decoder is None:
            _evict(entry, MAX_GRAPHS_PER_MODEL - 1, idle_budget(model))
            decoder = _new_decoder(entry, model, batch, capacity, kv_dtype)
            if decoder.fallback_reason is not None:
                if not _out_of_memory(decoder):  # a step that cannot be captured: never try this model again
                    entry["failed"] = decoder.fallback_reason
                return None
            decoders[key] = decoder
        decoders.move_to_end(key)
        entry["busy"].add(id(decoder))
    return decoder


def release_decoder(model, decoder: GraphedDecoder) -> None:
    """Marks a decoder from graphed_decoder free for the next generation (idle decoders past the budget go)."""
    with _REGISTRY.lock:
        entry = _REGISTRY.by_model.get(model)
        if entry is not None:
            entry["busy"].discard(id(decoder))
            _evict(entry, MAX_GRAPHS_PER_MODEL, idle_budget(model))


def idle_budget(model) -> int:
    """Bytes the idle decoders of `model` may hold: IDLE_MEMORY_FRACTION of its CUDA device (1 GiB elsewhere)."""
    device = model.embeddings.weight.device
    if device.type != "cuda":
        return 1 << 30
    return int(torch.cuda.get_device_properties(device).total_memory * IDLE_MEMORY_FRACTION)


def _evict(entry: dict, max_count: int, max_idle_bytes: int) -> None:
    """Drops the least recently used idle decoders until at most max_count decoders are kept and the idle ones
    hold at most max_idle_bytes (busy decoders stay: a generation is using them)."""
    decoders, busy = entry["decoders"], entry["busy"]
    idle = [k for k, d in decoders.items() if id(d) not in busy]  # least recently used first
    idle_bytes = sum(decoders[k].nbytes for k in idle)
    for k in idle:
        if len(decoders) <= max_count and idle_bytes <= max_idle_bytes:
            break
        idle_bytes -= decoders.pop(k).nbytes


def _new_decoder(entry: dict, model, batch: int, capacity: int, kv_dtype) -> GraphedDecoder:
    """A new decoder; when its state or its capture runs out of memory, every idle decoder is dropped and it is
    made once more (an out-of-memory error of the second state allocation propagates)."""
    try:
        decoder = GraphedDecoder(model, batch, capacity, kv_dtype=kv_dtype)
        if not _out_of_memory(decoder):
            return decoder
    except torch.OutOfMemoryError:
        pass
    _evict(entry, 0, 0)
    _empty_cache(model)
    return GraphedDecoder(model, batch, capacity, kv_dtype=kv_dtype)


def _out_of_memory(decoder: GraphedDecoder) -> bool:
    """Whether the capture fell back because memory ran out (worth another try later, unlike a host read)."""
    return (decoder.fallback_reason or "").startswith("OutOfMemoryError")


def _empty_cache(model) -> None:
    if model.embeddings.weight.device.type == "cuda":
        torch.cuda.empty_cache()


def graph_keys(model) -> list[tuple]:
    """The (batch, capacity, dtype, kv_dtype) of each decoder cached for `model`, least recently used first."""
    with _REGISTRY.lock:
        entry = _REGISTRY.by_model.get(model)
        return [] if entry is None else list(entry["decoders"])


def clear_graphs(model=None) -> None:
    """Drops the cached decoders (graphs and states) of `model`, or of every model, and their prefill graphs
    (prefill_graphs.py), freeing their memory."""
    from .prefill_graphs import drop_prefill_graphs  # a sibling that imports this module

    with _REGISTRY.lock:
        if model is None:
            _REGISTRY.by_model.clear()
        else:
            _REGISTRY.by_model.pop(model, None)
    drop_prefill_graphs(model)


@contextmanager
def eager_only(model, reason: str):
    """Within the block, generate() decodes `model` with the eager step: cuda_graph=None takes it and
    cuda_graph=True is refused with `reason`. For observers of the per-layer calls (the profiler): a graph replay
    runs the captured kernels without calling any module, and a capture would record their marks into the graph."""
    holds = model.__dict__.setdefault("_ssmkit_eager_only", [])
    holds.append(reason)
    try:
        yield
    finally:
        holds.remove(reason)


def eager_reason(model) -> str | None:
    """Why `model` must decode eagerly now (the innermost eager_only block), or None."""
    holds = model.__dict__.get("_ssmkit_eager_only")
    return holds[-1] if holds else None

