"""Sends a workload's requests to a `serve(request) -> ServeTiming` callable and records what each client saw.

Closed loop: `concurrency` client threads, each sending its next request when the previous one returns.
Open loop: a dispatcher sends each request at its arrival time (start within ARRIVAL_TOLERANCE_MS of schedule
while a worker is free) to a thread pool of `concurrency` workers (0: one per request in flight).
"""

from __future__ import annotations

import contextlib

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from .environment import describe_environment
from .memory_monitor import MemoryMonitor
from .request_log import Request
from .results import BenchmarkResult, RunResult
from .workload import Workload

# Open loop: start - scheduled arrival, for a callable that returns at once, on a machine with a free core (tested).
# A process the OS freezes (e.g. a container over its CPU quota) starts late by the freeze; every RunResult
# records its worst lag in max_start_lag_ms, so a late schedule shows in the results.
ARRIVAL_TOLERANCE_MS = 20.0


@dataclass
class ServeTiming:
    """What a serve callable reports for one request.

    ttft_ms: from the call to the first output token. prompt_tokens: the tokenized prompt length (required for
    text prompts; defaults to the request's prompt_tokens). batch: requests batched with this one, if known.
    peak/avg memory: per-request numbers if the runner measures them (else the driver's monitor window is used).
    """

    ttft_ms: float
    output_tokens: int
    prompt_tokens: int | None = None
    batch: int = 1
    quality_score: float | None = None
    peak_memory_bytes: int | None = None
    avg_memory_bytes: int | None = None


ServeFn = Callable[[Request], ServeTiming]


@dataclass
class _Call:
    request: Request
    repeat: int
    arrival: float  # absolute perf_counter seconds
    start: float
    end: float
    timing: ServeTiming | None
    error: str | None


def _call(serve: ServeFn, request: Request, arrival: float, repeat: int) -> _Call:
    start = time.perf_counter()
    try:
        timing, error = serve(request), None
    except Exception as err:  # one failed request is a result (e.g. out of memory), not the end of the run
        timing, error = None, f"{type(err).__name__}: {err}"
    end = time.perf_counter()
    if timing is not None and not 0 <= timing.ttft_ms <= (end - start) * 1e3 + 1e-6:
        error = f"serve reported ttft_ms={timing.ttft_ms:.3f} outside the call's {(end - start) * 1e3:.3f} ms"
    return _Call(request, repeat, arrival, start, end, timing, error)


def run_closed_loop(requests: list[Request], serve: ServeFn, concurrency: int, repeat: int = 0,
                    on_done: Callable[[], None] | None = None) -> list[_Call]:
    """`concurrency` clients; each request's arrival is the moment its client sent it."""
    pending = iter(requests)
    lock = threading.Lock()
    calls: list[_Call] = []

    def client():
        while True:
            with lock:
                req = next(pending, None)
            if req is None:
                return
            c = _call(serve, req, time.perf_counter(), repeat)
            with lock:
                calls.append(c)
            if on_done:
                on_done()

    threads = [threading.Thread(target=client, name=f"ssmkit-client-{i}")
               for i in range(min(concurrency, len(requests)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(calls, key=lambda c: c.request.request_id)


def run_open_loop(requests: list[Request], serve: ServeFn, max_in_flight: int = 0, repeat: int = 0,
                  on_done: Callable[[], None] | None = None) -> list[_Call]:
    """Sends each request at t0 + arrival_s; latency counts from the scheduled arrival, so time spent waiting
    for a free worker (max_in_flight reached) or a late dispatch counts as the client would see it."""
    ordered = sorted(requests, key=lambda r: r.arrival_s)
    t0 = time.perf_counter()

    def task(req):
        c = _call(serve, req, t0 + req.arrival_s, repeat)
        if on_done:
            on_done()
        return c

    with ThreadPoolExecutor(max_workers=max_in_flight or len(ordered), thread_name_prefix="ssmkit-open") as pool:
        futures = []
        for req in ordered:
            delay = t0 + req.arrival_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(task, req))
        calls = [f.result() for f in futures]
    return sorted(calls, key=lambda c: c.request.request_id)


def _out_of_memory(error: str) -> bool:
    """An error string of a request that ran out of memory (torch.OutOfMemoryError, MemoryError)."""
    return error.startswith(("OutOfMemoryError", "MemoryError")) or "out of memory" in error.lower()


def run_workload(workload: Workload, serve: ServeFn, *, model: str, dtype: str = "", device: str = "cpu",
                 quality_score: float | None = None, memory_interval_s: float = 0.01,
                 progress: Callable[[int, int], None] | None = None, environment: dict | None = None,
                 freeze_tuning: bool = True) -> RunResult:
    """Warm-up (the first `workload.warmup` requests, not recorded; a closed loop sends them from its C clients at
    once, so batched shapes compile and tune before the clock starts), then `workload.repeats` timed passes in
    `workload.mode`, under a MemoryMonitor on `device`. Returns the RunResult of all passes. A warm-up request
    that fails raises, unless it ran out of memory: that is a result (the timed requests that also run out are
    recorded as failed with their error), as a length sweep records its OOM point.

    progress(done, total) is called from worker threads after each timed request. environment: the
    describe_environment() dict to record (computed when None; pass one to reuse it across models).
    freeze_tuning: the timed passes run with Triton kernel tuning frozen (ssmkit.ops.ssd.triton.plan): a
    request of a shape bucket the warm-up did not meet takes the default block config instead of waiting seconds
    for every config to be compiled and timed, as a server does after Engine.warm_up.
    """
    clients = workload.concurrency if workload.mode == "closed" else 1
    for call in run_closed_loop(workload.requests[:workload.warmup], serve, max(1, clients), repeat=-1):
        if call.error is not None and not _out_of_memory(call.error):
            raise RuntimeError(f"warm-up request {call.request.request_id} failed: {call.error}")
    total = len(workload.requests) * workload.repeats
    done = [0]
    lock = threading.Lock()

    def on_done():
        with lock:
            done[0] += 1
            n = done[0]
        if progress:
            progress(n, total)

    calls: list[_Call] = []
    with _frozen_tuning(freeze_tuning), MemoryMonitor(device, memory_interval_s) as monitor:
        for repeat in range(workload.repeats):
            if workload.mode == "closed":
                calls += run_closed_loop(workload.requests, serve, workload.concurrency, repeat, on_done)
            else:
                calls += run_open_loop(workload.requests, serve, workload.concurrency, repeat, on_done)
    origins: dict[int, float] = {}
    for c in calls:
        origins[c.repeat] = min(origins.get(c.repeat, c.arrival), c.arrival)
    results = [_to_result(c, model, monitor, origins[c.repeat]) for c in calls]
    scores = [r.quality_score for r in results if r.quality_score is not None]
    if quality_score is None and scores:
        quality_score = sum(scores) / len(scores)
    env = environment or describe_environment()
    return RunResult.from_requests(
        results, model=model, workload=workload.name, mode=workload.mode, concurrency=workload.concurrency,
        peak_memory_bytes=monitor.peak_bytes, avg_memory_bytes=monitor.avg_bytes, memory_source=monitor.source,
        quality_score=quality_score, device=env["device"], dtype=dtype, versions=env["versions"], date=env["date"],
        command=env["command"], warmup=workload.warmup)


def _to_result(c: _Call, model: str, monitor: MemoryMonitor, origin: float) -> BenchmarkResult:
    """Converts absolute clock readings to seconds from the repeat's first arrival; failed calls keep zeros."""
    t = c.timing
    peak, avg = monitor.window(c.start, c.end)
    if t is not None and t.peak_memory_bytes is not None:
        peak, avg = t.peak_memory_bytes, t.avg_memory_bytes if t.avg_memory_bytes is not None else avg
    prompt_tokens = t.prompt_tokens if t is not None and t.prompt_tokens is not None else c.request.prompt_tokens
    error = c.error
    if error is None and prompt_tokens is None:
        error = "serve did not report prompt_tokens for a text prompt"
    ok = error is None
    return BenchmarkResult.from_times(
        model=model, request_id=c.request.request_id, prompt_tokens=prompt_tokens or 0,
        output_tokens=t.output_tokens if ok else 0, arrival_s=c.arrival - origin, start_s=c.start - origin,
        first_token_s=(c.start + t.ttft_ms / 1e3 if ok else c.end) - origin, end_s=c.end - origin,
        batch=t.batch if t is not None else 1, peak_memory_bytes=peak, avg_memory_bytes=avg,
        quality_score=t.quality_score if ok else None, repeat=c.repeat, error=error)


def _frozen_tuning(freeze: bool):
    """tuning_frozen() of the Triton tuner, or nothing (freeze False, or no triton installed)."""
    if freeze:
        try:
            from ssmkit.ops.ssd.triton.plan import tuning_frozen
        except ImportError:
            pass
        else:
            return tuning_frozen()
    return contextlib.nullcontext()
