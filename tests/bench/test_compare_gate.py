"""compare and gate on hand-made runs: B / A ratios equal the hand calculation, the gate names what failed and by
how much, exit codes are 1 on failure and 0 on success, and bad files are refused."""

import json
import math

import pytest
import torch

from ssmkit.bench.commands import compare_command, gate_command
from ssmkit.bench.compare import compare
from ssmkit.bench.gate import gate, gate_checks
from ssmkit.bench.results import GB, SCHEMA_VERSION, BenchmarkResult, RunResult, SchemaVersionError
from tests.compare import assert_close


def make_run(model, ttft_s, latency_s, tokens, peak_gb, quality=0.9, n=5, errors=0):
    """n identical requests issued back to back (percentiles equal the single value), errors of them failed."""
    reqs = [BenchmarkResult.from_times(model=model, request_id=i, prompt_tokens=64, output_tokens=tokens,
                                       arrival_s=i * latency_s, start_s=i * latency_s,
                                       first_token_s=i * latency_s + ttft_s, end_s=(i + 1) * latency_s,
                                       error="RuntimeError: x" if i < errors else None) for i in range(n)]
    return RunResult.from_requests(
        reqs, model=model, workload="w", mode="closed", concurrency=1, peak_memory_bytes=int(peak_gb * GB),
        avg_memory_bytes=int(peak_gb * GB / 2), memory_source="process-rss", quality_score=quality,
        device="cpu", dtype="fp32", versions={}, date="2026-01-01 00:00 UTC", command="test")


def _f64(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_compare_gives_b_over_a_for_each_metric():
    a = make_run("a", ttft_s=0.1, latency_s=1.0, tokens=50, peak_gb=2.0)
    b = make_run("b", ttft_s=0.3, latency_s=0.5, tokens=50, peak_gb=1.0)
    r = compare(a, b)
    # TTFT x3; per-request and run throughput x2 (same tokens in half the time); p95 latency x0.5; memory x0.5
    assert_close(_f64(*(r[k].ratio for k in ("ttft_p50_ms", "ttft_p95_ms", "tokens_per_s_p50",
                                              "throughput_tokens_per_s", "latency_p95_ms", "peak_memory_gb"))),
                 _f64(3.0, 3.0, 2.0, 2.0, 0.5, 0.5))
    assert (r["ttft_p50_ms"].better, r["throughput_tokens_per_s"].better, r["peak_memory_gb"].better) == \
        ("A", "B", "B")


def test_compare_ratio_with_a_zero_baseline_is_inf_and_zero_over_zero_is_nan():
    a = make_run("a", 0.1, 1.0, 10, peak_gb=0.0)
    assert math.isinf(compare(a, make_run("b", 0.1, 1.0, 10, peak_gb=1.0))["peak_memory_gb"].ratio)
    assert math.isnan(compare(a, a)["peak_memory_gb"].ratio)


def test_compare_command_prints_the_ratios_and_notes_differences(tmp_path, capsys):
    a, b = make_run("a", 0.1, 1.0, 50, 2.0), make_run("b", 0.2, 1.0, 50, 2.0)
    b.device = "NVIDIA H100"
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    assert compare_command(str(tmp_path / "a.json"), str(tmp_path / "b.json")) == 0
    out = capsys.readouterr().out
    ttft_row = next(line for line in out.splitlines() if line.startswith("| TTFT p50"))
    assert "2.000x" in ttft_row and ttft_row.rstrip(" |").endswith("A")
    assert "device differs" in out


def test_gate_passes_with_exit_code_0_when_every_limit_holds(tmp_path, capsys):
    make_run("m", 0.1, 0.8, 50, peak_gb=20.0, quality=0.85).save(tmp_path / "r.json")
    code = gate_command(str(tmp_path / "r.json"), min_quality=0.82, max_p95_latency_ms=900, max_memory_gb=24)
    out = capsys.readouterr().out
    assert code == 0 and "gate passed" in out and "FAIL" not in out


def test_gate_fails_with_exit_code_1_and_says_what_failed_and_by_how_much(tmp_path, capsys):
    make_run("m", 0.1, 1.2, 50, peak_gb=30.0, quality=0.80).save(tmp_path / "r.json")
    code = gate_command(str(tmp_path / "r.json"), min_quality=0.82, max_p95_latency_ms=900, max_memory_gb=24)
    out = capsys.readouterr().out
    assert code == 1 and "gate FAILED" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "300 ms over (33.3% above the limit)" in rows["p95 total latency"]
    assert "6 GiB over (25.0% above the limit)" in rows["peak memory"]
    assert "0.02 under (2.4% below the limit)" in rows["quality score"]
    assert "PASS" in rows["failed requests"]


def test_gate_failures_carry_the_excess_in_units_and_percent():
    run = make_run("m", 0.1, 1.2, 50, peak_gb=30.0, quality=0.80)
    failures = {f.name: f for f in gate(run, min_quality=0.82, max_p95_latency_ms=900, max_memory_gb=24)}
    assert set(failures) == {"quality score", "p95 total latency", "peak memory"}
    got = [failures[k].excess for k in ("quality score", "p95 total latency", "peak memory")]
    assert_close(_f64(*got), _f64(0.02, 300.0, 6.0), tol=(1e-9, 1e-9))
    assert_close(_f64(failures["p95 total latency"].excess_pct), _f64(100 / 3))


def test_gate_fails_when_quality_is_missing_or_requests_failed():
    run = make_run("m", 0.1, 0.5, 10, 1.0, quality=None, errors=1)
    failures = {f.name: f for f in gate(run, min_quality=0.5)}
    assert failures["quality score"].describe() == "no value in the results"
    assert_close(_f64(failures["failed requests"].actual), _f64(0.2))
    assert not gate(run, max_failed_fraction=0.25)


def test_gate_optional_limits_ttft_and_throughput():
    run = make_run("m", 0.5, 1.0, 10, 1.0)  # TTFT 500 ms, 10 tokens/s
    assert {f.name for f in gate(run, max_p95_ttft_ms=400, min_throughput_tokens_per_s=20)} == \
        {"p95 TTFT", "throughput"}
    assert len(gate_checks(run, max_p95_ttft_ms=600, min_throughput_tokens_per_s=5)) == 3  # + failed requests


def test_gate_rejects_a_negative_limit():
    with pytest.raises(ValueError, match="p95 total latency limit: expected a finite number >= 0"):
        gate(make_run("m", 0.1, 0.5, 10, 1.0), max_p95_latency_ms=-1)


def test_commands_refuse_a_results_file_of_another_schema_version(tmp_path):
    data = make_run("m", 0.1, 0.5, 10, 1.0).to_dict()
    data["schema_version"] = 0
    (tmp_path / "old.json").write_text(json.dumps(data))
    make_run("m", 0.1, 0.5, 10, 1.0).save(tmp_path / "new.json")
    with pytest.raises(SchemaVersionError, match=rf"old\.json: results schema version 0.*version {SCHEMA_VERSION}"):
        compare_command(str(tmp_path / "new.json"), str(tmp_path / "old.json"))
    with pytest.raises(SchemaVersionError, match=r"old\.json"):
        gate_command(str(tmp_path / "old.json"), max_memory_gb=1)
    with pytest.raises(FileNotFoundError):
        gate_command(str(tmp_path / "missing.json"))
