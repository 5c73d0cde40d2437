"""Result records: derived fields agree with their definitions, percentiles match numpy and stay ordered, JSON
round-trips every field, and files of another schema version are refused with both versions named."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.bench.results import (SCHEMA_VERSION, SUMMARIZED, BenchmarkResult, RunResult, SchemaVersionError,
                                  percentile, summarize)
from tests.compare import assert_close

META = dict(model="m", workload="w", mode="closed", concurrency=1, peak_memory_bytes=3 * 2**30,
            avg_memory_bytes=2 * 2**30, memory_source="process-rss", quality_score=0.9, device="cpu", dtype="fp32",
            versions={"torch": "x"}, date="2026-01-01 00:00 UTC", command="ssmkit bench")


def _f64(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def request(i=0, arrival=0.0, start=0.0, first=0.1, end=1.0, out=11, repeat=0, error=None):
    return BenchmarkResult.from_times(model="m", request_id=i, prompt_tokens=100 + i, output_tokens=out,
                                      arrival_s=arrival, start_s=start, first_token_s=first, end_s=end,
                                      repeat=repeat, error=error)


def test_from_times_derives_latency_fields_from_their_definitions():
    r = request(arrival=1.0, start=1.5, first=2.0, end=5.0, out=11)
    # from arrival: total 4 s, first token after 1 s, 10 gaps between 11 tokens share the remaining 3 s
    assert_close(_f64(r.total_latency_ms, r.ttft_ms, r.tokens_per_s, r.time_per_output_token_ms),
                 _f64(4000.0, 1000.0, 11 / 4.0, 300.0))
    assert request(out=1).time_per_output_token_ms is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.sampled_from([0, 1, 37.5, 50, 95, 99, 100]))
def test_percentile_matches_numpy_linear_interpolation(values, q):
    assert_close(_f64(percentile(values, q)), _f64(float(np.percentile(values, q, method="linear"))),
                 tol=(1e-10, 1e-12))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1e5), min_size=1, max_size=40))
def test_percentiles_are_ordered(values):
    s = summarize(values)
    assert min(values) <= s.p50 <= s.p95 <= s.p99 <= max(values)


def test_percentile_of_one_value_is_that_value_and_of_none_is_nan():
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="q: expected"):
        percentile([1.0], 101)


def test_run_summary_and_throughput_equal_hand_calculation():
    # 4 requests: latencies 1, 2, 3, 4 s from arrivals 0, 1, 2, 3; the run spans 0 .. 7 s
    reqs = [request(i, arrival=i, start=i, first=i + 0.5, end=2 * i + 1, out=10 * (i + 1)) for i in range(4)]
    run = RunResult.from_requests(reqs, **META)
    lat = [1000.0, 2000.0, 3000.0, 4000.0]
    s = run.summary["total_latency_ms"]
    assert_close(_f64(s.p50, s.p95, s.p99, s.mean), _f64(*(np.percentile(lat, [50, 95, 99]).tolist()), 2500.0))
    assert_close(_f64(run.duration_s, run.throughput_tokens_per_s, run.throughput_requests_per_s),
                 _f64(7.0, 100 / 7.0, 4 / 7.0))
    for r in run.requests:  # tokens/s = tokens / time for every request
        assert_close(_f64(r.tokens_per_s), _f64(r.output_tokens / (r.total_latency_ms / 1e3)))
    assert set(run.summary) == set(SUMMARIZED)
    for p in run.summary.values():
        assert p.p50 <= p.p95 <= p.p99


def test_failed_requests_are_counted_and_left_out_of_percentiles_and_throughput():
    reqs = [request(0, end=1.0), request(1, end=2.0, error="OutOfMemoryError: boom")]
    run = RunResult.from_requests(reqs, **META)
    assert run.failed_requests == 1 and run.summary["total_latency_ms"].count == 1
    assert_close(_f64(run.summary["total_latency_ms"].p99, run.throughput_tokens_per_s), _f64(1000.0, 11 / 2.0))


def test_repeats_report_the_median_of_each_repeats_percentile():
    reqs = [request(k, end=lat, repeat=k) for k, lat in enumerate([1.0, 5.0, 2.0])]
    run = RunResult.from_requests(reqs, **META)
    assert run.repeats == 3
    assert_close(_f64(run.summary["total_latency_ms"].p50, run.duration_s), _f64(2000.0, 2.0))


def test_save_and_load_round_trip_every_field(tmp_path):
    run = RunResult.from_requests([request(0), request(1, out=1, end=0.5)], **META)
    path = tmp_path / "r.json"
    run.save(path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert {f.name for f in dataclasses.fields(RunResult)} == set(data)
    assert {f.name for f in dataclasses.fields(BenchmarkResult)} == set(data["requests"][0])
    back = RunResult.load(path)
    assert back.to_dict() == run.to_dict()


def test_percentiles_of_a_run_with_no_successful_request_save_as_null_and_load_as_nan(tmp_path):
    run = RunResult.from_requests([request(0, error="RuntimeError: x")], **META)
    run.save(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["ttft_ms"]["p95"] is None
    assert math.isnan(RunResult.load(tmp_path / "r.json").summary["ttft_ms"].p95)


def test_load_refuses_another_schema_version_naming_the_file_and_both_versions(tmp_path):
    path = tmp_path / "old.json"
    data = RunResult.from_requests([request(0)], **META).to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(SchemaVersionError) as err:
        RunResult.load(path)
    msg = str(err.value)
    assert str(path) in msg and f"version {SCHEMA_VERSION + 1}" in msg and f"schema version {SCHEMA_VERSION}" in msg
    del data["schema_version"]
    path.write_text(json.dumps(data))
    with pytest.raises(SchemaVersionError, match=r"old\.json: no schema_version"):
        RunResult.load(path)


def test_load_names_the_file_for_missing_fields_and_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    data = RunResult.from_requests([request(0)], **META).to_dict()
    del data["requests"][0]["ttft_ms"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"broken\.json: requests\[0\]: missing fields \['ttft_ms'\]"):
        RunResult.load(path)
    path.write_text('{"schema_version": 1,\n "model": }')
    with pytest.raises(ValueError, match=r"broken\.json:2: not valid JSON"):
        RunResult.load(path)
