import socket

import torch.multiprocessing as mp

from ssmkit.profile import TraceStore

from . import ep_worker
from .models import UNITS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_equal_the_single_process_model_and_record_every_all_to_all(tmp_path):
    mp.spawn(ep_worker.run, args=(2, str(tmp_path), _free_port()), nprocs=2, join=True)
    model_calls = 1 + 1 + (ep_worker.NEW_TOKENS - 1)  # a forward, then generate's prefill and decode steps
    for rank in (0, 1):
        with TraceStore(tmp_path / f"rank{rank}.duckdb", read_only=True) as store:
            counts = dict(store.query("SELECT layer_type, count(*) FROM events GROUP BY ALL")[1])
            moe_calls = counts["moe"]
            assert moe_calls == 2 * model_calls
            assert counts["all_to_all"] == 3 * moe_calls  # counts, dispatch, combine
            assert sum(counts.values()) == len(UNITS) * model_calls + 3 * moe_calls
            # Each MoE call's exchange_ns is the sum of its three all-to-all events, which lie inside the call.
            rows = store.query("""
                SELECT m.exchange_ns, sum(a.duration_ns), count(*), min(a.start_ns) >= any_value(e.start_ns),
                       max(a.start_ns + a.duration_ns) <= any_value(e.start_ns + e.duration_ns)
                FROM moe_routing m JOIN events e USING (run_id, call_id)
                JOIN events a ON a.run_id = e.run_id AND a.layer_type = 'all_to_all' AND a.layer_idx = e.layer_idx
                     AND a.call_id BETWEEN e.call_id + 1 AND e.call_id + 3
                GROUP BY m.call_id, m.exchange_ns""")[1]
            assert len(rows) == moe_calls
            for exchange_ns, total, n, after_start, before_end in rows:
                assert n == 3 and exchange_ns == total and exchange_ns > 0 and after_start and before_end
            # Capacities per call of n tokens, top-2 over 4 experts (n / 2 per expert): layer 3 reports its own
            # factors (1/2, 1, 2, 1/4) -> ceil(n/4, n/2, n, n/8); layer 1 has none, so the profiler's 1.25 ->
            # ceil(5n/8). Nothing is dropped at inference.
            for layer, n_tokens, counts, capacity, overflow, dropped in store.query(
                    "SELECT layer_idx, n_tokens, expert_counts, expert_capacity, expert_overflow, dropped "
                    "FROM moe_routing")[1]:
                n = n_tokens
                expected = [-(-n // 4), -(-n // 2), n, -(-n // 8)] if layer == 3 else [-(-5 * n // 8)] * 4
                assert capacity == expected and dropped == 0
                assert overflow == [max(0, c - cap) for c, cap in zip(counts, expected)]
