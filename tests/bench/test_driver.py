"""The driver: open loop starts requests at their arrival times within ARRIVAL_TOLERANCE_MS, closed loop holds
exactly N in flight, latencies count queueing from arrival, failures and warm-up are handled as documented."""

import threading
import time

import pytest
import torch

from ssmkit.bench.driver import ARRIVAL_TOLERANCE_MS, ServeTiming, run_closed_loop, run_open_loop, run_workload
from ssmkit.bench.request_log import Request
from ssmkit.bench.traces import load_azure_trace
from ssmkit.bench.workload import Workload
from tests.compare import assert_close

ENV = {"device": "test-cpu", "versions": {"torch": torch.__version__}, "date": "2026-01-01 00:00 UTC",
       "command": "pytest"}


def fast_serve(request):
    return ServeTiming(ttft_ms=0.0, output_tokens=request.output_tokens)


def sleeping_serve(seconds, ttft_fraction=0.25):
    def serve(request):
        time.sleep(seconds)
        return ServeTiming(ttft_ms=seconds * ttft_fraction * 1e3, output_tokens=request.output_tokens)
    return serve


def open_loop_lags_ms(reqs):
    calls = run_open_loop(reqs, fast_serve)
    t0 = calls[0].arrival - reqs[0].arrival_s
    return [(c.start - (t0 + c.request.arrival_s)) * 1e3 for c in calls]


def test_open_loop_starts_each_request_within_tolerance_of_its_arrival():
    # the conversation trace's first 120 requests compressed 50x: 45 s of traffic in 0.9 s, gaps down to ~0 ms.
    # A container over its CPU quota can freeze the whole process for 100s of ms (seen at load 8 on 2 cores);
    # that is the machine, not the driver, so the best of three attempts must meet the tolerance.
    reqs = load_azure_trace("conv", 120, time_scale=0.02)
    attempts = []
    for _ in range(3):
        lags = open_loop_lags_ms(reqs)
        assert min(lags) >= -1.0, "a request was sent before its arrival time"
        attempts.append(max(lags))
        if attempts[-1] <= ARRIVAL_TOLERANCE_MS:
            break
    assert min(attempts) <= ARRIVAL_TOLERANCE_MS, f"worst start lag per attempt (ms): {attempts}"


def test_open_loop_run_records_scheduled_arrivals_and_the_worst_start_lag():
    reqs = load_azure_trace("code", 60, time_scale=0.01, length_scale=0.1)
    run = run_workload(Workload("code", reqs, mode="open", concurrency=0, warmup=0), fast_serve, model="fake",
                       environment=ENV)
    f64 = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
    assert_close(f64([r.arrival_s for r in run.requests]), f64([q.arrival_s for q in reqs]), tol=(1e-9, 1e-9))
    assert_close(f64(run.max_start_lag_ms), f64(max((r.start_s - r.arrival_s) * 1e3 for r in run.requests)))
    assert run.mode == "open" and all(r.start_s >= r.arrival_s - 1e-3 for r in run.requests)


def test_closed_loop_keeps_exactly_concurrency_requests_in_flight():
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def serve(request):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.005)
        with lock:
            state["now"] -= 1
        return ServeTiming(1.0, request.output_tokens, prompt_tokens=3)

    reqs = [Request(i, output_tokens=4, prompt="p") for i in range(24)]
    calls = run_closed_loop(reqs, serve, concurrency=3)
    assert state["max"] == 3 and sorted(c.request.request_id for c in calls) == list(range(24))


def test_open_loop_latency_counts_waiting_for_a_free_worker():
    # three requests arrive together, one worker, 30 ms each: the k-th waits (k-1) service times before it starts
    reqs = [Request(i, output_tokens=2, prompt_tokens=5) for i in range(3)]
    run = run_workload(Workload("burst", reqs, mode="open", concurrency=1, warmup=0), sleeping_serve(0.03),
                       model="fake", environment=ENV)
    by_start = sorted(run.requests, key=lambda r: r.start_s)
    for k, r in enumerate(by_start):
        assert r.arrival_s == 0.0 and r.start_s >= 0.03 * k - 1e-3
        assert r.total_latency_ms >= 30 * (k + 1) - 1 and r.ttft_ms >= 30 * k + 7.5 - 1
    assert run.max_start_lag_ms >= 60 - 1


def test_every_result_field_is_present_and_consistent():
    reqs = [Request(i, output_tokens=1 + i % 5, prompt_tokens=10 + i) for i in range(16)]
    run = run_workload(Workload("w", reqs, concurrency=4, warmup=1, repeats=2), sleeping_serve(0.004),
                       model="fake", dtype="fp32", environment=ENV)
    assert run.repeats == 2 and len(run.requests) == 32 and run.failed_requests == 0
    assert run.memory_source == "process-rss" and run.peak_memory_bytes >= run.avg_memory_bytes > 0
    assert run.device == "test-cpu" and run.dtype == "fp32" and run.command == "pytest"
    for r in run.requests:
        assert r.arrival_s <= r.start_s <= r.end_s and 0 <= r.ttft_ms <= r.total_latency_ms
        assert r.peak_memory_bytes >= r.avg_memory_bytes > 0 and r.prompt_tokens == 10 + r.request_id
        assert_close(torch.tensor(r.tokens_per_s, dtype=torch.float64),
                     torch.tensor(r.output_tokens / (r.total_latency_ms / 1e3), dtype=torch.float64))
        assert (r.time_per_output_token_ms is None) == (r.output_tokens == 1)
    for p in run.summary.values():
        assert p.p50 <= p.p95 <= p.p99
    assert run.throughput_tokens_per_s > 0 and run.duration_s > 0


def test_warmup_requests_are_served_but_not_recorded():
    calls = []

    def serve(request):
        calls.append(request.request_id)
        return ServeTiming(0.0, request.output_tokens)

    reqs = [Request(i, output_tokens=2, prompt_tokens=5) for i in range(5)]
    run = run_workload(Workload("w", reqs, warmup=2, repeats=3), serve, model="fake", environment=ENV)
    assert calls[:2] == [0, 1] and len(calls) == 2 + 15 and len(run.requests) == 15


def test_closed_loop_warmup_sends_its_requests_from_every_client_at_once_and_a_failure_raises():
    """A barrier of 4 parties passes only if the 4 warm-up requests are in flight together (batched shapes warm)."""
    barrier = threading.Barrier(4, timeout=5)
    served = []

    def serve(request):
        if request.request_id < 4 and not served.count(request.request_id):
            barrier.wait()
        served.append(request.request_id)
        return ServeTiming(0.0, request.output_tokens)

    reqs = [Request(i, output_tokens=2, prompt_tokens=5) for i in range(6)]
    run = run_workload(Workload("w", reqs, concurrency=4, warmup=4), serve, model="fake", environment=ENV)
    assert sorted(served[:4]) == [0, 1, 2, 3] and len(served) == 4 + 6 and len(run.requests) == 6

    def broken(request):
        raise ValueError("bad weights")

    with pytest.raises(RuntimeError, match="warm-up request 0 failed: ValueError: bad weights"):
        run_workload(Workload("w", reqs[:1], warmup=1), broken, model="fake", environment=ENV)

    def out_of_memory(request):  # a result, not the end: the timed requests are recorded as failed
        raise MemoryError("out of memory")

    run = run_workload(Workload("w", reqs[:2], warmup=1), out_of_memory, model="fake", environment=ENV)
    assert [r.error for r in run.requests] == ["MemoryError: out of memory"] * 2


def test_a_failing_request_is_recorded_with_its_error_and_the_run_continues():
    def serve(request):
        if request.request_id == 1:
            raise MemoryError("out of memory at 4096 tokens")
        return ServeTiming(0.0, request.output_tokens)

    reqs = [Request(i, output_tokens=2, prompt_tokens=5) for i in range(3)]
    run = run_workload(Workload("w", reqs, warmup=0), serve, model="fake", environment=ENV)
    assert run.failed_requests == 1 and run.summary["ttft_ms"].count == 2
    assert run.requests[1].error == "MemoryError: out of memory at 4096 tokens"


@pytest.mark.parametrize("timing, problem", [
    (ServeTiming(ttft_ms=1e6, output_tokens=2), "outside the call"),
    (ServeTiming(ttft_ms=0.0, output_tokens=2), "did not report prompt_tokens"),
])
def test_inconsistent_serve_reports_become_request_errors(timing, problem):
    reqs = [Request(0, output_tokens=2, prompt="text without a token count")]
    run = run_workload(Workload("w", reqs, warmup=0), lambda r: timing, model="fake", environment=ENV)
    assert problem in run.requests[0].error


def test_progress_reports_every_timed_request():
    seen = []
    reqs = [Request(i, output_tokens=1, prompt_tokens=1) for i in range(6)]
    run_workload(Workload("w", reqs, concurrency=2, warmup=0), fast_serve, model="fake", environment=ENV,
                 progress=lambda done, total: seen.append((done, total)))
    assert sorted(seen) == [(k, 6) for k in range(1, 7)]


def test_kernel_tuning_is_frozen_in_the_timed_passes_only():
    """Warm-up requests may tune Triton kernels; timed ones never stall on tuning (and it is restored after)."""
    from ssmkit.ops.ssd.triton.plan import tuning_is_frozen

    reqs = load_azure_trace("conv", 6)
    seen = []

    def serve(request):
        seen.append(tuning_is_frozen())
        return fast_serve(request)

    run_workload(Workload("conv", reqs, mode="closed", concurrency=1, warmup=2), serve, model="fake",
                 environment=ENV)
    assert seen == [False] * 2 + [True] * 6 and not tuning_is_frozen()
    seen.clear()
    run_workload(Workload("conv", reqs, mode="closed", concurrency=1, warmup=0), serve, model="fake",
                 environment=ENV, freeze_tuning=False)
    assert seen == [False] * 6
