"""Length sweep: a memory cap records an out-of-memory point and stops the model, allocator and host OOM errors
become results, KV grows linearly while SSM state stays flat, the file round-trips, and the HTML report holds
well-formed SVG charts with the OOM point."""

import re
import xml.etree.ElementTree as ET

import pytest
import torch

from ssmkit.bench.memory_plan import plan_memory
from ssmkit.bench.report import render_report
from ssmkit.bench.results import BenchmarkResult, RunResult
from ssmkit.bench.runner import Benchmarker
from ssmkit.bench.sweep import SweepResult, format_sweep, is_out_of_memory, length_sweep
from ssmkit.io import ByteTokenizer
from ssmkit.models import LanguageModel, ModelConfig


ENV = {"device": "test-cpu", "versions": {"torch": torch.__version__}, "date": "2026-01-01 00:00 UTC",
       "command": "pytest"}


def bench_of(name):
    torch.manual_seed(0)
    return Benchmarker(LanguageModel(ModelConfig.from_name(name)).eval(), ByteTokenizer(), name, quality=False)


@pytest.fixture(scope="module")
def sweeps():
    out = []
    for name in ("tiny-llama", "tiny-mamba2"):
        bench = bench_of(name)
        cap = plan_memory(bench.model.config, context=128 + 2, dtype="fp32", kernels="torch").total_bytes  # 128 fits, 256 not
        out.append(length_sweep(bench, [32, 64, 128, 256, 512], new_tokens=2, memory_cap_bytes=cap,
                                warmup=False, environment=ENV))
    return out


def test_sweep_records_the_out_of_memory_length_under_a_cap_and_stops(sweeps):
    for s in sweeps:
        assert [p.prompt_tokens for p in s.points] == [32, 64, 128, 256]  # 512 never tried
        assert [p.status for p in s.points] == ["ok", "ok", "ok", "oom"]
        assert s.oom_length == 256 and s.max_ok_length == 128
        oom = s.points[-1]
        assert oom.ttft_ms is None and "exceed the memory cap" in oom.error and oom.planned_bytes > s.memory_cap_bytes
        for p in s.points[:-1]:
            assert 0 < p.ttft_ms <= p.total_latency_ms and p.decode_ms_per_token >= 0
            assert p.peak_memory_bytes > 0 and p.memory_source == "weights+tensor-peak"
            assert p.planned_bytes <= s.memory_cap_bytes


def test_kv_cache_grows_with_length_while_ssm_state_stays_flat(sweeps):
    attn, ssm = sweeps
    kv = [p.kv_bytes for p in attn.points]
    # tiny-llama: 2 layers x (K, V) x 2 KV heads x 16 dims x 4 bytes = 512 bytes per position (+2 new tokens)
    assert kv == [512 * (n + 2) for n in (32, 64, 128, 256)]
    assert {p.kv_bytes for p in ssm.points} == {0} and len({p.state_bytes for p in ssm.points}) == 1


@pytest.mark.parametrize("err,status", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
    (RuntimeError("CUDA error: out of memory"), "oom"),
    (MemoryError(), "oom"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes"), "oom"),
    (RuntimeError("shape mismatch"), "error"),
])
def test_allocator_errors_become_an_oom_point_not_a_crash(err, status):
    bench = bench_of("tiny-llama")
    real = bench.generate_once

    def failing(ids, n, batch=1):
        if len(ids) >= 32:
            raise err
        return real(ids, n, batch)

    bench.generate_once = failing
    s = length_sweep(bench, [16, 32, 64], new_tokens=2, warmup=False, environment=ENV)
    assert [p.status for p in s.points] == ["ok", status]
    assert s.points[-1].error.startswith(type(err).__name__)
    assert is_out_of_memory(err) == (status == "oom")


def test_sweep_stops_at_its_deadline_and_notes_it():
    s = length_sweep(bench_of("tiny-llama"), [16, 32], new_tokens=2, warmup=False, environment=ENV, deadline=0.0)
    assert s.points == [] and s.notes == ["stopped by the time budget before 16 tokens"]


def test_sweep_file_round_trips_and_other_files_are_refused(sweeps, tmp_path):
    path = tmp_path / "sweep.json"
    sweeps[0].save(path)
    back = SweepResult.load(path)
    assert back == sweeps[0]
    RunResult.from_requests([BenchmarkResult.from_times(
        model="m", request_id=0, prompt_tokens=1, output_tokens=1, arrival_s=0, start_s=0, first_token_s=0.1,
        end_s=0.2)], model="m", workload="w", mode="closed", concurrency=1, peak_memory_bytes=0, avg_memory_bytes=0,
        memory_source="none", quality_score=None, device="cpu", dtype="fp32", versions={}, date="d",
        command="c").save(tmp_path / "run.json")
    with pytest.raises(ValueError, match="not a length-sweep results file"):
        SweepResult.load(tmp_path / "run.json")


def test_report_embeds_well_formed_svg_charts_and_marks_oom(sweeps):
    run = RunResult.from_requests([BenchmarkResult.from_times(
        model="m", request_id=i, prompt_tokens=8, output_tokens=4, arrival_s=i, start_s=i, first_token_s=i + 0.1,
        end_s=i + 0.3) for i in range(3)], model="m", workload="w", mode="closed", concurrency=1,
        peak_memory_bytes=2**20, avg_memory_bytes=2**19, memory_source="process-rss", quality_score=0.5,
        device="cpu", dtype="fp32", versions={"torch": "x"}, date="d", command="c <&>")
    html = render_report(title="t", runs=[run], sweeps=sweeps, extras={"gate": "| a | <b> |"})
    svgs = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    assert len(svgs) == 6  # TTFT and latency bars, 4 sweep charts
    for svg in svgs:
        ET.fromstring(svg)
    assert "OOM" in html and "&lt;b&gt;" in html and "c &lt;&amp;&gt;" in html and "<script" not in html
    assert "| tiny-llama  |           256 |     1 |    OOM |" in format_sweep(sweeps)
