"""Circuit breakers on a fake clock: slow or failing traffic opens one, the router reroutes along the fallback order,
and after the cool-down half-open probes close it again (or a failed probe reopens it).
"""

from dataclasses import replace

import numpy as np
import pytest
import torch

from ssmkit.route import BreakerConfig, CircuitBreaker, FeedbackConfig, RequestFeatures, Router, RouterConfig
from ssmkit.route.breaker import CLOSED, HALF_OPEN, OPEN, p99
from tests.compare import assert_close

CFG = BreakerConfig(window_s=10.0, min_requests=5, p99_ms=100.0, error_rate=0.3, cooldown_s=5.0, probes=2)
LONG_SMALL_GPU = RequestFeatures(40_000, "chat", gpu_memory_gb=16)   # rule: mamba


class FakeClock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.mark.parametrize("n", [1, 2, 99, 100, 101, 250])
def test_p99_is_the_nearest_rank_percentile(n):
    values = np.random.default_rng(n).exponential(50.0, size=n)
    want = np.percentile(values, 99, method="inverted_cdf")
    assert_close(torch.tensor(p99(values.tolist()), dtype=torch.float64), torch.tensor(want, dtype=torch.float64))


def test_breaker_opens_when_p99_latency_exceeds_the_threshold():
    clock = FakeClock()
    b = CircuitBreaker("m", CFG, clock)
    for _ in range(5):
        b.record(50.0)
    assert b.state == CLOSED
    b.record(500.0)  # 6 results: the nearest-rank p99 is the largest
    assert b.state == OPEN and not b.allow()
    assert b.reason == "p99 latency 500 ms > 100 ms over the last 6 requests"


def test_breaker_waits_for_min_requests_and_forgets_results_outside_the_window():
    clock = FakeClock()
    b = CircuitBreaker("m", CFG, clock)
    for _ in range(4):
        b.record(900.0)
    assert b.state == CLOSED  # only 4 < min_requests results
    clock.t = 10.5           # the slow ones leave the 10 s window
    for _ in range(5):
        b.record(20.0)
    assert b.state == CLOSED and b.snapshot()["window"] == 5


def test_breaker_opens_on_error_rate():
    clock = FakeClock()
    b = CircuitBreaker("m", CFG, clock)
    for i in range(10):
        b.record(10.0, error=i % 3 == 0)  # errors at 0, 3, 6, 9 -> after 10 results the rate is 0.4 > 0.3
        clock.t += 0.1
    assert b.state == OPEN and b.reason.startswith("error rate 0.40 > 0.3")


def test_breaker_half_opens_after_cooldown_reopens_on_a_failed_probe_and_closes_after_probes():
    clock = FakeClock()
    b = CircuitBreaker("m", CFG, clock)
    for _ in range(6):
        b.record(1000.0)
    assert b.state == OPEN
    clock.t += 4.9
    assert b.state == OPEN
    clock.t += 0.1
    assert b.state == HALF_OPEN and b.allow()
    b.record(150.0)  # a slow probe
    assert b.state == OPEN and b.reason.startswith("probe failed (latency 150 ms")
    clock.t += 5.0
    b.record(30.0)
    assert b.state == HALF_OPEN
    b.record(30.0)
    assert b.state == CLOSED and b.snapshot()["window"] == 0


def _router(clock):
    cfg = RouterConfig(backends=("transformer", "mamba", "hybrid"), fallback=("mamba", "hybrid", "transformer"),
                       feedback=FeedbackConfig(enabled=False), breaker=CFG,
                       breaker_per_backend={"transformer": replace(CFG, p99_ms=10_000.0)})
    return Router(db=":memory:", config=cfg, clock=clock)


def test_router_reroutes_around_an_open_breaker_and_returns_after_recovery():
    clock = FakeClock(100.0)
    router = _router(clock)
    # Injected latency: Mamba answers in 2 s against a 100 ms p99 threshold.
    for i in range(5):
        d = router.decide(LONG_SMALL_GPU, request_id=f"slow{i}")
        assert (d.backend, d.source) == ("mamba", "rule")
        router.record_latency(d.request_id, 2000.0)
        clock.t += 0.2
    d = router.decide(LONG_SMALL_GPU, request_id="rerouted")
    assert (d.backend, d.source, d.rerouted_from, d.rule) == ("hybrid", "fallback", "mamba", "long-context-small-gpu")
    assert "breaker of mamba open (p99 latency 2000 ms > 100 ms" in d.reason and d.role == "hybrid"
    states = {s["backend"]: s["state"] for s in router.breaker_states()}
    assert states == {"transformer": CLOSED, "mamba": OPEN, "hybrid": CLOSED}
    clock.t += CFG.cooldown_s  # recovered: probes go to Mamba and succeed
    for i in range(CFG.probes):
        d = router.decide(LONG_SMALL_GPU, request_id=f"probe{i}")
        assert (d.backend, d.source) == ("mamba", "rule")
        router.record_latency(d.request_id, 40.0)
    assert {s["backend"]: s["state"] for s in router.breaker_states()}["mamba"] == CLOSED
    assert router.decide(LONG_SMALL_GPU).backend == "mamba"


def test_fallback_wraps_around_the_order_and_reports_unavailable_when_all_are_open():
    clock = FakeClock()
    router = _router(clock)
    for name in ("hybrid", "mamba"):
        for _ in range(5):
            router.observe(name, 0.0, error=True)
    d = router.decide(LONG_SMALL_GPU)
    assert (d.backend, d.rerouted_from) == ("transformer", "mamba")  # hybrid is next after mamba but open
    for _ in range(5):
        router.observe("transformer", 0.0, error=True)
    d = router.decide(LONG_SMALL_GPU)
    assert (d.backend, d.source, d.confidence) == ("mamba", "unavailable", 0.0)
