"""Turns the profiler's raw call records into rows of the events and moe_routing tables, once per flush.

The hot path keeps no Python object per call (each one would be garbage-collector work, and the collector's full
passes over torch's heap cost more than the rest of the profiler): a call is 5 integers in an array (CALL_FIELDS)
and 2 marks (integers on CPU, pooled CUDA events). Everything derived (times on the run's clock, layer, type,
request, phase, step) is computed here as numpy columns for a whole batch; the MoE layers' result tensors of a
batch are read back to the host in one copy per device.
"""

from __future__ import annotations

import numpy as np
import torch

from ssmkit.layers.moe import capacity_from_factor

from .clocks import CpuClock
from .events import imbalance

CALL_FIELDS = ("call_id", "unit", "context", "batch", "seqlen")  # unit: Profiler's index; context: model call


def event_columns(calls, marks, run_id: int, clock, units: tuple[np.ndarray, ...],
                  contexts: list[tuple]) -> dict[str, np.ndarray]:
    """The events table's columns for n calls.

    calls: array('q') of 5 n ints (CALL_FIELDS per call); marks: the 2 n start and end marks; units: layer_idx
    and layer_type arrays by unit (first two); contexts: (request_id, phase, step) by context index.
    """
    table = np.frombuffer(calls, dtype=np.int64).reshape(-1, len(CALL_FIELDS))
    call_id, unit, context, batch, seqlen = table.T
    lo, hi = int(context.min()), int(context.max())
    request, phase, step = (np.array(column, dtype=object if i == 1 else np.int64)
                            for i, column in enumerate(zip(*contexts[lo:hi + 1])))
    context = context - lo
    if isinstance(clock, CpuClock):  # integer marks: arithmetic on whole columns
        pairs = np.frombuffer(marks, dtype=np.int64).reshape(-1, 2)
        start_ns, duration_ns = pairs[:, 0] - clock.origin, pairs[:, 1] - pairs[:, 0]
    else:
        starts, ends = marks[0::2], marks[1::2]
        start_ns = np.array([clock.since_origin(s) for s in starts], dtype=np.int64)
        duration_ns = np.array([clock.elapsed_ns(s, e) for s, e in zip(starts, ends)], dtype=np.int64)
    return {"run_id": np.full(len(table), run_id, dtype=np.int32), "call_id": call_id.copy(),
            "request_id": request[context].astype(np.int32), "phase": phase[context],
            "step": step[context].astype(np.int32), "layer_idx": units[0][unit].astype(np.int32),
            "layer_type": units[1][unit], "batch": batch.astype(np.int32), "seqlen": seqlen.astype(np.int32),
            "start_ns": start_ns, "duration_ns": duration_ns}


def moe_rows(moe: list[tuple], first: int, events: dict, run_id: int, clock, factor: float | None) -> list[tuple]:
    """Rows in MOE_COLUMNS order for MoE records (call index, n_experts, top_k, expert counts, capacity,
    overflow, dropped, route marks or None, exchange mark pairs or None); events: the columns of the calls from
    index `first` on."""
    if not moe:
        return []
    lists = iter(tensor_lists([t for record in moe for t in record[3:7] if t is not None]))
    out = []
    for index, n_experts, top_k, counts_t, capacity_t, overflow_t, dropped_t, route, exchanges in moe:
        i = index - first
        n_tokens = int(events["batch"][i]) * int(events["seqlen"][i])
        counts = [0] * n_experts if counts_t is None else [int(c) for c in next(lists)]
        caps = overflow = None
        dropped = 0
        if capacity_t is not None:
            caps, overflow = next(lists), next(lists)
            dropped = 0 if dropped_t is None else int(sum(next(lists)))
        elif factor is not None:
            caps = [capacity_from_factor(factor, n_tokens, top_k, n_experts)] * n_experts
            overflow = [max(0, c - cap) for c, cap in zip(counts, caps)]
        capacity = caps[0] if caps and len(set(caps)) == 1 else None
        router_ns = None if route is None else clock.elapsed_ns(*route)
        exchange_ns = sum(clock.elapsed_ns(*pair) for pair in exchanges) if exchanges else None
        expert_ns = None if router_ns is None else int(events["duration_ns"][i]) - router_ns - (exchange_ns or 0)
        out.append((run_id, int(events["call_id"][i]), int(events["layer_idx"][i]), n_tokens, counts,
                    imbalance(counts), capacity, sum(overflow or []), dropped, caps, overflow, router_ns, expert_ns,
                    exchange_ns))
    return out


def tensor_lists(tensors: list[torch.Tensor]) -> list[list]:
    """Each tensor flattened to a list of int64 values, with one host copy per device (a torch.cat of all
    tensors on it), instead of one synchronizing .tolist() per tensor."""
    out: list = [None] * len(tensors)
    by_device: dict = {}
    for i, t in enumerate(tensors):
        by_device.setdefault(t.device, []).append(i)
    for indices in by_device.values():
        flat = [tensors[i].reshape(-1).to(torch.int64) for i in indices]
        values = torch.cat(flat).tolist()
        offset = 0
        for i, part in zip(indices, flat):
            n = part.numel()
            out[i] = values[offset:offset + n]
            offset += n
    return out


def marks_to_release(marks: list, exchange_call: np.ndarray, moe: list[tuple]) -> list:
    """The marks no later record reads: start and end of each call but the all-to-alls (exchange_call, per call:
    True for an all_to_all record, whose marks its MoE call, a later record, reads as exchange marks), and each
    MoE call's route and exchange marks."""
    out = [m for i, m in enumerate(marks) if not exchange_call[i >> 1]]
    for *_, route, exchanges in moe:
        if route is not None:
            out += route
        for pair in exchanges or ():
            out += pair
    return out
