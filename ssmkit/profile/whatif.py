"""What-if scheduling over a recorded trace: two micro-batches decode side by side on one GPU with one link for the
MoE all-to-all; how long does a step of both take under two policies?

- "shared": at each MoE layer both micro-batches issue their exchange at the same time on one shared stream (one
  fused all-to-all: one launch latency, the link's time is the sum of both payloads); compute waits for it.
- "overlap": exchanges are serialized on the communication stream while the other micro-batch's Mamba/attention/
  expert compute runs on the compute stream (two-resource list scheduling, each micro-batch a chain of tasks).
Consecutive recorded decode model calls stand in for the two micro-batches' work, so the modelled steps carry the
recorded variance; p50/p99 over all pairs are reported, with "serial" (no overlap at all) for reference.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .store import TraceStore


@dataclass
class ExchangeModel:
    """All-to-all time of an MoE call when the trace did not measure one (a single-process run).

    One direction takes latency_ns + (assignments received by the busiest rank) * d_model * bytes_per_element
    / bytes_per_ns; an MoE call does two (dispatch and combine). Experts are split over `world_size` ranks in
    contiguous blocks, so an imbalanced router makes the exchange as slow as its most loaded rank.
    """

    world_size: int = 2
    latency_ns: float = 15_000.0
    bytes_per_ns: float = 50.0  # 50 GB/s
    bytes_per_element: int = 2

    def one_way_ns(self, expert_counts: list[int], d_model: int) -> float:
        per_rank = np.array_split(np.asarray(expert_counts, dtype=np.float64), self.world_size)
        busiest = max(float(r.sum()) for r in per_rank)
        return self.latency_ns + busiest * d_model * self.bytes_per_element / self.bytes_per_ns


def decode_chains(store: TraceStore, run_id: int | None = None, exchange: ExchangeModel | None = None
                  ) -> list[list[tuple[str, float]]]:
    """One chain of ("compute" | "exchange", ns) tasks per recorded decode model call, in recording order.

    A non-MoE layer is one compute task. An MoE call is router compute, dispatch exchange, expert compute,
    combine exchange; the exchange is the measured exchange_ns when present (split in halves, and taken out of
    the call's duration), else `exchange` (default ExchangeModel()) applied to the call's expert counts.
    """
    run_id = store.check_run(run_id)
    exchange = exchange or ExchangeModel()
    model = json.loads(store.query("SELECT model FROM runs WHERE run_id = ?", [run_id])[1][0][0] or "{}")
    d_model = model.get("config", {}).get("d_model", 1)
    rows = store.query(
        "SELECT e.request_id, e.step, e.layer_type, e.duration_ns, m.router_ns, m.exchange_ns, m.expert_counts "
        "FROM events e LEFT JOIN moe_routing m USING (run_id, call_id) "
        "WHERE e.run_id = ? AND e.phase = 'decode' AND e.layer_type != 'all_to_all' ORDER BY e.call_id",
        [run_id])[1]
    chains: dict[tuple[int, int], list] = {}
    for request_id, step, layer_type, duration, router_ns, exchange_ns, counts in rows:
        chain = chains.setdefault((request_id, step), [])
        if layer_type != "moe":
            chain.append(("compute", float(duration)))
            continue
        if exchange_ns is not None:
            half, compute = exchange_ns / 2, duration - exchange_ns
        else:
            half, compute = exchange.one_way_ns(counts, d_model), float(duration)
        router = min(float(router_ns or 0.0), compute)
        chain += [("compute", router), ("exchange", half), ("compute", compute - router), ("exchange", half)]
    return list(chains.values())


def serial_ns(a: list, b: list) -> float:
    """Micro-batch a, then b, nothing overlapped."""
    return sum(ns for _, ns in a) + sum(ns for _, ns in b)


def shared_ns(a: list, b: list, latency_ns: float) -> float:
    """Lockstep: the computes of a and b run one after the other; each paired exchange is one fused all-to-all
    for both (one launch latency saved), which both wait for."""
    total = 0.0
    for (kind, x), (_, y) in zip(a, b):
        total += x + y - (latency_ns if kind == "exchange" else 0.0)
    return total


def overlap_ns(a: list, b: list) -> float:
    """List scheduling on two resources (compute stream, communication stream), one task at a time each; a task
    starts when its predecessor in its chain has finished and its resource is free; ties go to micro-batch a."""
    chains = [a, b]
    nxt, ready = [0, 0], [0.0, 0.0]
    free = {"compute": 0.0, "exchange": 0.0}
    while nxt[0] < len(a) or nxt[1] < len(b):
        starts = [max(ready[i], free[chains[i][nxt[i]][0]]) if nxt[i] < len(chains[i]) else np.inf
                  for i in (0, 1)]
        i = 0 if starts[0] <= starts[1] else 1
        kind, ns = chains[i][nxt[i]]
        ready[i] = free[kind] = starts[i] + ns
        nxt[i] += 1
    return max(ready)


@dataclass
class WhatIf:
    """Modelled time of one step of two micro-batches (ns) under each policy, over all recorded pairs."""

    pairs: int
    serial: dict
    shared: dict
    overlap: dict
    exchange_share: float  # exchange time / (compute + exchange) over the recorded chains


def what_if(store: TraceStore, run_id: int | None = None, exchange: ExchangeModel | None = None) -> WhatIf:
    """Pairs consecutive decode model calls of run `run_id` as two micro-batches and models both policies."""
    exchange = exchange or ExchangeModel()
    chains = decode_chains(store, run_id, exchange)
    pairs = [(chains[i], chains[i + 1]) for i in range(0, len(chains) - 1, 2)
             if len(chains[i]) == len(chains[i + 1])]
    if not pairs:
        raise ValueError("run: expected at least two decode model calls to pair, got fewer")
    results = {"serial": [serial_ns(a, b) for a, b in pairs],
               "shared": [shared_ns(a, b, exchange.latency_ns) for a, b in pairs],
               "overlap": [overlap_ns(a, b) for a, b in pairs]}
    stats = {k: {"p50_ns": float(np.percentile(v, 50)), "p99_ns": float(np.percentile(v, 99)),
                 "mean_ns": float(np.mean(v))} for k, v in results.items()}
    ex = sum(ns for c in chains for kind, ns in c if kind == "exchange")
    total = sum(ns for c in chains for _, ns in c)
    return WhatIf(pairs=len(pairs), exchange_share=ex / total if total else 0.0, **stats)


def format_what_if(w: WhatIf) -> str:
    lines = [f"what-if over {w.pairs} pairs of decode steps (exchange = {100 * w.exchange_share:.1f}% of the work)",
             "policy    p50 us    p99 us"]
    for name in ("serial", "shared", "overlap"):
        s = getattr(w, name)
        lines.append(f"{name:<8} {s['p50_ns'] / 1e3:8.1f}  {s['p99_ns'] / 1e3:8.1f}")
    return "\n".join(lines)
