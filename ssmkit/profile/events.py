"""The one event schema of the per-layer profiler: a LayerEvent per call of a block's mixer or feed-forward and a
MoERouting record per MoE call. The store's `events` and `moe_routing` tables have exactly these fields as columns
(see schema.py); analysis is SQL over them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Mixer kinds and feed-forward kinds of ModelConfig; "all_to_all" is the exchange of an expert-parallel MoE layer.
LAYER_TYPES = ("mamba", "mamba2", "attention", "s4", "mlp", "moe", "all_to_all")
PHASES = ("prefill", "decode")


@dataclass
class LayerEvent:
    """One call of one layer (a mixer, a feed-forward or an all-to-all exchange).

    call_id numbers the calls of a run in the order they began; moe_routing and kernels rows refer to it.
    step counts the model calls of a request from 0 (the prefill, or its first chunk). start_ns is measured from
    the start of the run on the run's clock (CPU monotonic clock or CUDA events); duration_ns is the call's time.
    """

    run_id: int
    call_id: int
    request_id: int
    phase: str
    step: int
    layer_idx: int
    layer_type: str
    batch: int
    seqlen: int
    start_ns: int
    duration_ns: int


@dataclass
class MoERouting:
    """Routing of one MoE call (call_id of its LayerEvent).

    expert_counts[e]: token assignments to expert e (top_k per token). imbalance: max / mean of the counts (1 =
    balanced; None when no token was routed). expert_capacity[e]: the layer's MoE.last_capacity (its own factor
    or per-expert factors), else ceil(factor * tokens * top_k / n_experts) with the profiler's factor;
    capacity: their common value (None when experts differ or there is no factor); expert_overflow[e]: the
    layer's MoE.last_overflow, else counts past the profiler's capacity; over_capacity: their sum; dropped: the
    assignments the layer actually dropped (MoE.last_dropped: MoE drops only in training mode). router_ns / expert_ns: time in
    MoE.route and in the rest of the call; exchange_ns: all-to-all time of an expert-parallel layer (None when the
    layer is not split over ranks).
    """

    run_id: int
    call_id: int
    layer_idx: int
    n_tokens: int
    expert_counts: list[int]
    imbalance: float | None
    capacity: int | None
    over_capacity: int
    dropped: int
    expert_capacity: list[int] | None
    expert_overflow: list[int] | None
    router_ns: int | None
    expert_ns: int | None
    exchange_ns: int | None


EVENT_COLUMNS = tuple(f.name for f in dataclasses.fields(LayerEvent))
MOE_COLUMNS = tuple(f.name for f in dataclasses.fields(MoERouting))


def infer_phase(seqlen: int, via_step: bool = False, step: int = 0) -> str:
    """The phase of a model call nobody named: a call through step() (LanguageModel.step) is a decode step; a
    forward over several positions is a prefill (or a chunk of one); a one-position forward is the prefill when
    it is the request's first call (step 0), else a decode step."""
    if via_step:
        return "decode"
    return "prefill" if seqlen > 1 or step == 0 else "decode"


def imbalance(counts: list[int]) -> float | None:
    """max / mean of per-expert counts; None when nothing was routed."""
    total = sum(counts)
    return None if total == 0 else max(counts) * len(counts) / total

