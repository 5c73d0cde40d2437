"""Turns the profiler's raw call records into rows of the events and moe_routing tables, once per flush.

The hot path stores only what it cannot get later (marks, the input's shape, the MoE layer's result tensors);
everything derived (batch, seqlen, times on the run's clock, expert counts as lists, capacities) is computed
here, for a whole batch: the device tensors of all MoE calls are read back to the host in one copy per device.

A raw record is (opened, end mark, meta) for a layer call and (opened, end mark, meta, moe) for an MoE call, with
opened = (call_id, context, input shape, start mark), context = (request_id, phase, step) of the model call,
meta = (layer_idx, layer_type) and moe = (n_experts, top_k, expert counts, capacity, overflow, dropped,
route marks or None, [exchange mark pairs]).
"""

from __future__ import annotations

import torch

from ssmkit.layers.moe import capacity_from_factor

from .clocks import CpuClock
from .events import imbalance


def event_rows(records: list, run_id: int, clock) -> list[tuple]:
    """Rows in EVENT_COLUMNS order, one per record."""
    if isinstance(clock, CpuClock):  # integer marks: plain arithmetic
        origin = clock.origin
        return [(run_id, call_id, *context, *meta, shape[0], shape[1] if len(shape) == 3 else 1,
                 start - origin, end - start)
                for (call_id, context, shape, start), end, meta, *_ in records]
    since, elapsed = clock.since_origin, clock.elapsed_ns
    return [(run_id, call_id, *context, *meta, shape[0], shape[1] if len(shape) == 3 else 1,
             since(start), elapsed(start, end))
            for (call_id, context, shape, start), end, meta, *_ in records]


def moe_rows(records: list, events: list[tuple], run_id: int, clock, factor: float | None) -> list[tuple]:
    """Rows in MOE_COLUMNS order for the MoE records among `records` (events: their event_rows, same order)."""
    picked = [(record, row) for record, row in zip(records, events) if len(record) == 4]
    if not picked:
        return []
    tensors = [t for record, _ in picked for t in record[3][2:6] if t is not None]
    lists = iter(tensor_lists(tensors))
    out = []
    for record, row in picked:
        n_experts, top_k, counts_t, capacity_t, overflow_t, dropped_t, route, exchanges = record[3]
        n_tokens, duration = row[7] * row[8], row[10]
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
        expert_ns = None if router_ns is None else duration - router_ns - (exchange_ns or 0)
        out.append((run_id, row[1], row[5], n_tokens, counts, imbalance(counts), capacity, sum(overflow or []),
                    dropped, caps, overflow, router_ns, expert_ns, exchange_ns))
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


def marks_to_release(records: list) -> list:
    """The marks of `records` no later record reads: start and end of each call, and an MoE call's route and
    exchange marks (an all_to_all record's marks are also its MoE call's exchange marks, and that record comes
    later, so the MoE record releases them)."""
    marks = []
    for (_, _, _, start), end, meta, *moe in records:
        if meta[1] == "all_to_all":
            continue
        marks += (start, end)
        if moe:
            route, exchanges = moe[0][6], moe[0][7]
            if route is not None:
                marks += route
            for pair in exchanges:
                marks += pair
    return marks
