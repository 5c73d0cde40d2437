"""Workloads: example files load, synthetic lengths follow their distribution, request logs replay with scaled
time and lengths, the shipped Azure slice equals its source rows, and malformed input names file and line."""

import csv
import glob
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmkit.bench.request_log import read_request_log
from ssmkit.bench.traces import DATA_DIR, load_azure_trace
from ssmkit.bench.workload import load_workload, synthetic_requests
from tests.compare import assert_close

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path("/work/shared/data")


def _f64(xs):
    return torch.tensor(list(xs), dtype=torch.float64)


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_every_example_workload_loads():
    files = sorted(glob.glob(str(ROOT / "examples/workloads/*.yaml")))
    assert len(files) >= 5
    for f in files:
        w = load_workload(f)
        assert w.requests and all(r.output_tokens >= 1 for r in w.requests)
        assert all(r.prompt is not None or r.prompt_tokens >= 1 for r in w.requests)


def test_lognormal_lengths_have_the_configured_median_and_spread_and_repeat_with_the_seed():
    spec = {"distribution": "lognormal", "median": 400, "sigma": 0.5, "min": 1, "max": 10**6}
    reqs = synthetic_requests(4000, spec, 7, seed=3)
    logs = np.log([r.prompt_tokens for r in reqs])
    # sample median and std of the log lengths; 4000 draws: standard errors ~1% and ~0.6% of sigma
    assert abs(np.exp(np.median(logs)) / 400 - 1) < 0.05 and abs(logs.std() / 0.5 - 1) < 0.05
    assert all(r.output_tokens == 7 for r in reqs)
    assert [r.prompt_tokens for r in synthetic_requests(50, spec, 7, seed=3)] == [r.prompt_tokens for r in reqs[:50]]


def test_lengths_are_clipped_to_min_and_max():
    spec = {"distribution": "lognormal", "median": 100, "sigma": 2.0, "min": 50, "max": 200}
    lengths = [r.prompt_tokens for r in synthetic_requests(500, spec, {"distribution": "uniform", "min": 3,
                                                                          "max": 5}, seed=0)]
    assert min(lengths) == 50 and max(lengths) == 200


def test_poisson_arrivals_have_the_configured_rate():
    reqs = synthetic_requests(2001, 10, 10, seed=0, arrival_rate_per_s=5.0)
    gaps = np.diff([r.arrival_s for r in reqs])
    assert reqs[0].arrival_s == 0 and (gaps >= 0).all()
    assert abs(gaps.mean() / 0.2 - 1) < 0.08  # mean gap 1/rate; 2000 gaps: standard error ~2.2%


def test_request_log_replays_sorted_from_zero_with_time_and_length_scales(tmp_path):
    p = write(tmp_path, "log.jsonl", '{"arrival_s": 12.0, "prompt_tokens": 100, "output_tokens": 9}\n\n'
                                      '{"arrival_s": 10.0, "prompt": "hi", "output_tokens": 4, "user": "x"}\n')
    reqs = read_request_log(p, time_scale=0.5, length_scale=0.25)
    assert [(r.prompt, r.prompt_tokens, r.output_tokens) for r in reqs] == [("hi", None, 1), (None, 25, 2)]
    assert_close(_f64(r.arrival_s for r in reqs), _f64([0.0, 1.0]))
    assert len(read_request_log(p, limit=1)) == 1


@pytest.mark.parametrize("line, problem", [
    ('{"arrival_s": 1.0, "prompt_tokens": 5, "output_tokens": 3', "not valid JSON"),
    ('{"arrival_s": 1.0, "prompt_tokens": 5}', "output_tokens: expected an integer >= 1"),
    ('{"arrival_s": -1, "prompt_tokens": 5, "output_tokens": 3}', "arrival_s: expected a number"),
    ('{"arrival_s": 1.0, "output_tokens": 3}', "expected prompt_tokens"),
    ('[1, 2, 3]', "expected a JSON object"),
])
def test_malformed_request_log_line_names_file_and_line(tmp_path, line, problem):
    good = '{"arrival_s": 0.0, "prompt_tokens": 5, "output_tokens": 3}\n'
    p = write(tmp_path, "bad.jsonl", good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: .*{problem}"):
        read_request_log(p)


@pytest.mark.parametrize("text, line, problem", [
    ("name: x\nprompts:\n  - a\n  - [b\n", 5, "malformed YAML"),
    ("name: x\nconcurency: 3\nprompts: [a]\n", 2, "unknown key 'concurency'"),
    ("synthetic:\n  requests: 4\n  prompt_tokens:\n    distribution: lognormal\n    median: 10\n    sigma: -1\n",
     3, "lognormal needs median > 0 and sigma >= 0"),
    ("synthetic:\n  requests: 4\n  output_tokens: {distribution: zipf}\n", 3, "output_tokens.distribution"),
    ("prompts:\n  - ok\n  - text: ''\n", 3, r"prompts\.1: expected non-empty text"),
    ("mode: burst\nprompts: [a]\n", 1, "mode: expected 'closed' or 'open'"),
    ("prompts: [a]\nrepeats: 0\n", 2, "repeats: expected >= 1"),
    ("prompts: [a]\nreplay: {trace: azure-conv}\n", 2, "exactly one of"),
    ("replay:\n  trace: azure-chat\n", 2, "replay.trace: expected one of"),
    ("name: x\nreplay:\n  path: missing.jsonl\n", 3, "replay.path: cannot read"),
    ("replay:\n  trace: azure-code\n  limit: many\n", 3, "replay.limit: expected"),
])
def test_invalid_workload_yaml_names_file_and_line(tmp_path, text, line, problem):
    p = write(tmp_path, "w.yaml", text)
    with pytest.raises(ValueError, match=rf"w\.yaml:{line}: .*{problem}"):
        load_workload(p)


def test_replay_of_a_malformed_log_names_the_log_file_and_line(tmp_path):
    write(tmp_path, "log.jsonl", '{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 3}\nnot json\n')
    p = write(tmp_path, "w.yaml", "name: x\nreplay:\n  path: log.jsonl\n")
    with pytest.raises(ValueError, match=r"w\.yaml:2: .*log\.jsonl:2: not valid JSON"):
        load_workload(p)


def test_load_azure_trace_scales_time_and_lengths_of_the_shipped_slice():
    full = load_azure_trace("conv")
    part = load_azure_trace("conv", 50, time_scale=0.1, length_scale=0.5)
    assert len(full) == 300 and len(part) == 50
    assert_close(_f64(r.arrival_s for r in part), _f64(r.arrival_s * 0.1 for r in full[:50]))
    assert [r.prompt_tokens for r in part] == [max(1, round(r.prompt_tokens * 0.5)) for r in full[:50]]
    with pytest.raises(ValueError, match=r"n: expected 1\.\.300"):
        load_azure_trace("code", 301)
    with pytest.raises(ValueError, match="service: expected one of"):
        load_azure_trace("chat")


@pytest.mark.skipif(not SOURCE.is_dir(), reason="the full Azure trace CSVs are not on this machine")
@pytest.mark.parametrize("service", ["conv", "code"])
def test_shipped_slice_equals_the_first_300_rows_of_the_source_csv(service):
    with open(SOURCE / f"azure-llm-inference-2023-{service}.csv", newline="") as f:
        rows = [row for _, row in zip(range(300), csv.DictReader(f))]
    # independent clock: numpy datetime64 at nanosecond resolution
    stamps = np.array([np.datetime64(r["TIMESTAMP"].replace(" ", "T"), "ns") for r in rows])
    expected = (stamps - stamps[0]) / np.timedelta64(1, "s")
    reqs = load_azure_trace(service)
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs] == [(int(r["ContextTokens"]),
                                                                   int(r["GeneratedTokens"])) for r in rows]
    assert_close(_f64(r.arrival_s for r in reqs), torch.tensor(expected), tol=(1e-8, 1e-7))  # microsecond rounding


def test_shipped_slice_keeps_its_license_and_attribution_beside_it():
    readme = (DATA_DIR / "README.md").read_text()
    for needed in ("CC BY 4.0", "Splitwise", "Patel", "ISCA 2024", "first 300 rows"):
        assert needed in readme
    assert math.isclose(load_azure_trace("conv")[-1].arrival_s, 84.03, abs_tol=0.01)
