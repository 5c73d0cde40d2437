"""Prometheus metrics of one server, in a registry of its own (two servers in one process do not collide).

Counters and histograms are updated as requests run; queue depth, running sequences and breaker states are read
at scrape time from the engines and the router, the Triton tuner's totals from ssmkit.ops.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BREAKER_CODES = {"closed": 0, "half_open": 1, "open": 2}


class ServerMetrics:
    """The server's metrics. `load` () -> {backend: (running, queued)} and `breakers` () -> router snapshots
    are called at each scrape."""

    def __init__(self, load, breakers):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ssmkit_requests", "Requests answered, by backend, endpoint and HTTP status",
                                ["backend", "endpoint", "status"], registry=r)
        self.tokens = Counter("ssmkit_tokens", "Tokens processed, by backend and kind (prompt | completion)",
                              ["backend", "kind"], registry=r)
        self.latency = Histogram("ssmkit_request_latency_seconds", "End-to-end latency of answered requests",
                                 ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("ssmkit_time_to_first_token_seconds", "From arrival to the first token",
                              ["backend"], buckets=LATENCY_BUCKETS, registry=r)
        self.decisions = Counter("ssmkit_routing_decisions", "Routing decisions, by rule, chosen backend and source "
                                 "(rule | feedback | explore | fallback | unavailable | pinned)",
                                 ["rule", "backend", "source"], registry=r)
        self.rejected = Counter("ssmkit_rejected", "Requests refused before running, by backend and reason",
                                ["backend", "reason"], registry=r)
        r.register(_LiveCollector(load, breakers))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    def __init__(self, load, breakers):
        self.load, self.breakers = load, breakers

    def collect(self):
        queue = GaugeMetricFamily("ssmkit_queue_depth", "Requests waiting for a slot", labels=["backend"])
        running = GaugeMetricFamily("ssmkit_running_sequences", "Sequences in the decode batch", labels=["backend"])
        for backend, (n_running, n_queued) in self.load().items():
            queue.add_metric([backend], n_queued)
            running.add_metric([backend], n_running)
        breaker = GaugeMetricFamily("ssmkit_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
                                    labels=["backend"])
        for snap in self.breakers():
            breaker.add_metric([snap["backend"]], BREAKER_CODES.get(snap["state"], -1))
        yield from (queue, running, breaker)
        stats = _kernel_tuning()
        if stats is not None:
            tuned = GaugeMetricFamily("ssmkit_kernel_tunings", "Triton kernel shape buckets tuned in this process "
                                      "(each times every block config once)")
            tuned.add_metric([], stats["tuned"])
            seconds = GaugeMetricFamily("ssmkit_kernel_tuning_seconds", "Seconds spent compiling and timing "
                                        "Triton block configs in this process (requests wait meanwhile)")
            seconds.add_metric([], stats["seconds"])
            untuned = GaugeMetricFamily("ssmkit_kernel_untuned_calls", "Triton kernel calls of a shape bucket not "
                                        "tuned while tuning was frozen (after warm-up): they ran the default config")
            untuned.add_metric([], stats["untuned"])
            yield from (tuned, seconds, untuned)

    def describe(self):
        return []


def _kernel_tuning() -> dict | None:
    """ssmkit.ops' Triton tuner statistics, or None where triton is not installed."""
    try:
        from ssmkit.ops.ssd.triton.plan import tuning_stats
    except ImportError:
        return None
    return tuning_stats()
