"""Benchmarker on tiny models: every result field present and consistent with the clock readings, warm-up not
recorded, repeats give medians, static batching batches concurrent requests, a memory cap fails requests as
results, and generated tokens are the ones generate() gives."""

import dataclasses
import statistics
import sys
import threading

import pytest
import torch

from ssmkit.bench.batcher import StaticBatcher
from ssmkit.bench.request_log import Request
from ssmkit.bench.results import BenchmarkResult, RunResult
from ssmkit.bench.runner import Benchmarker
from ssmkit.inference import generate
from ssmkit.io import ByteTokenizer
from ssmkit.models import LanguageModel, ModelConfig
from tests.compare import assert_close

ENV = {"device": "test-cpu", "versions": {"torch": torch.__version__}, "date": "2026-01-01 00:00 UTC",
       "command": "pytest"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LanguageModel(ModelConfig.from_name("tiny-mamba2")).eval()


def f64(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_measure_generation_fields_agree_with_each_other(model):
    bench = Benchmarker(model, ByteTokenizer(), "m2", quality=False)
    r = bench.measure_generation("State space models keep a fixed-size state.", max_new_tokens=6, batch=2)
    assert r.prompt_tokens == 43 and r.output_tokens == 12 and r.batch == 2 and r.error is None
    assert 0 < r.ttft_ms <= r.total_latency_ms
    assert_close(f64(r.tokens_per_s, r.time_per_output_token_ms, r.total_latency_ms),
                 f64(12 / (r.total_latency_ms / 1e3), (r.total_latency_ms - r.ttft_ms) / 11,
                     (r.end_s - r.arrival_s) * 1e3))
    assert r.peak_memory_bytes >= r.avg_memory_bytes > 0 and r.quality_score is None


def test_generate_once_produces_the_tokens_of_generate(model, monkeypatch):
    bench = Benchmarker(model, ByteTokenizer(), "m2", quality=False)
    expected = generate(model, torch.tensor([[5, 6, 7, 8]]), max_new_tokens=5, eos_token_id=[])[0, 4:].tolist()
    seen = []
    gen = sys.modules["ssmkit.inference.generate"]  # the package re-exports a function of the same name
    real = gen.generate_steps

    def spy(*args, **kwargs):
        for step in real(*args, **kwargs):
            seen.append(int(step.tokens[0]))
            yield step

    monkeypatch.setattr(gen, "generate_steps", spy)
    t = bench.generate_once([5, 6, 7, 8], 5)
    assert seen == expected and len(t.per_token_ms) == 4 and min(t.per_token_ms) >= 0
    assert_close(f64(sum(t.per_token_ms)), f64((t.end - t.first) * 1e3), tol=(1e-9, 1e-9))
    assert t.start <= t.first <= t.end


def test_run_suite_skips_warmup_records_every_repeat_and_orders_percentiles(model):
    bench = Benchmarker(model, ByteTokenizer(), "m2", quality=True)
    calls = []
    real = bench.generate_once
    bench.generate_once = lambda ids, n, batch=1: calls.append(len(ids)) or real(ids, n, batch)
    run = bench.run_suite(["a short prompt", 40, 25], max_new_tokens=3, warmup=1, repeats=2, concurrency=2,
                          environment=ENV)
    assert len(calls) == 1 + 3 * 2  # one warm-up call, not recorded
    assert len(run.requests) == 6 and run.repeats == 2 and run.failed_requests == 0
    assert sorted(r.prompt_tokens for r in run.requests) == [14, 14, 25, 25, 40, 40]
    for key, p in run.summary.items():
        assert p.p50 <= p.p95 <= p.p99, key
    # every field of the schema is present and set; quality comes from the suite, in [0, 1]
    d = run.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(RunResult)}
    assert all(set(r) == {f.name for f in dataclasses.fields(BenchmarkResult)} for r in d["requests"])
    assert 0.0 <= run.quality_score <= 1.0 and run.quality_score == bench.quality().score
    assert run.dtype == "fp32" and run.device == "test-cpu"
    # with 2 repeats the p50 is the median of each repeat's p50
    per_repeat = [statistics.median(r.ttft_ms for r in run.requests if r.repeat == k) for k in (0, 1)]
    assert_close(f64(run.summary["ttft_ms"].p50), f64(statistics.median(per_repeat)))


def test_static_batching_runs_concurrent_requests_together(model):
    bench = Benchmarker(model, ByteTokenizer(), "m2", batching="static", max_batch=4, quality=False)
    reqs = [Request(i, 4, prompt_tokens=20 + i) for i in range(8)]
    try:
        from ssmkit.bench.workload import Workload
        run = bench.run_workload(Workload("w", reqs, concurrency=4, warmup=0), environment=ENV)
    finally:
        bench.close()
    assert run.failed_requests == 0 and max(r.batch for r in run.requests) > 1
    assert all(r.ttft_ms <= r.total_latency_ms for r in run.requests)


def test_static_batcher_releases_each_request_at_its_own_last_token_and_reports_errors():
    steps_seen = []

    def run_batch(prompts, max_new, on_step):
        if any(p == [99] for p in prompts):
            raise RuntimeError("CUDA out of memory")  # e.g. in prefill, before any token
        for t in range(max_new):
            steps_seen.append(t)
            on_step(t)

    batcher = StaticBatcher(run_batch, max_batch=8, window_s=0.05)
    out = {}

    def client(ids, n):
        try:
            out[n] = batcher.serve_ids(ids, n)
        except RuntimeError as err:
            out[n] = err

    threads = [threading.Thread(target=client, args=([1], n)) for n in (2, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[2][1] == out[5][1] == 2 and steps_seen == [0, 1, 2, 3, 4]  # one batch of two, run to 5 tokens
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.serve_ids([99], 3)
    batcher.close()


def test_memory_cap_fails_requests_as_results_not_crashes(model):
    bench = Benchmarker(model, ByteTokenizer(), "m2", quality=False, memory_cap_bytes=3 * 2**20)
    run = bench.run_suite([16, 2000], max_new_tokens=2, warmup=0, repeats=1, environment=ENV)
    ok, oom = run.requests
    assert ok.error is None and "MemoryError: out of memory: planned" in oom.error
    assert run.failed_requests == 1 and run.summary["ttft_ms"].count == 1


def test_bad_arguments_are_named(model):
    with pytest.raises(ValueError, match="batching: expected one of"):
        Benchmarker(model, ByteTokenizer(), "m2", batching="dynamic")
    bench = Benchmarker(model, ByteTokenizer(), "m2", quality=False)
    with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 1"):
        bench.measure_generation("x", 0)
    with pytest.raises(ValueError, match="prompt: expected a non-empty prompt"):
        bench.measure_generation("", 2)
    with pytest.raises(ValueError, match="prompts: expected at least one prompt"):
        bench.run_suite([])
