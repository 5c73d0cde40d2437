"""Benchmark results: one `BenchmarkResult` per request, one `RunResult` per (model, workload) run, saved as JSON.

Percentiles use linear interpolation between closest ranks (numpy's default, Hyndman-Fan type 7), so
p50 <= p95 <= p99 always holds. A results file carries `schema_version`; files of another version are refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
GB = 2**30  # "GB" in gates and tables means GiB, the unit GPU memory sizes are quoted in
SUMMARIZED = ("prompt_tokens", "output_tokens", "ttft_ms", "time_per_output_token_ms", "total_latency_ms",
              "tokens_per_s")


class SchemaVersionError(ValueError):
    """A results file written with another schema version (a ValueError: the CLI reports it with exit code 2)."""


@dataclass
class BenchmarkResult:
    """One request, as the client saw it. Times are seconds from the start of the run (`time.perf_counter`).

    Latencies count from `arrival_s`, when the client issued the request, so queueing in front of the model counts:
    `total_latency_ms = (end_s - arrival_s) * 1e3`; `tokens_per_s = output_tokens / (total_latency_ms / 1e3)`;
    `time_per_output_token_ms = (total_latency_ms - ttft_ms) / (output_tokens - 1)`, None for a single-token output.
    A request that raised has `error` set and is left out of the percentiles.
    """

    model: str
    request_id: int
    prompt_tokens: int
    output_tokens: int
    batch: int
    ttft_ms: float
    tokens_per_s: float
    total_latency_ms: float
    time_per_output_token_ms: float | None
    peak_memory_bytes: int
    avg_memory_bytes: int
    quality_score: float | None
    arrival_s: float
    start_s: float
    end_s: float
    repeat: int = 0
    error: str | None = None

    @classmethod
    def from_times(cls, *, model: str, request_id: int, prompt_tokens: int, output_tokens: int, arrival_s: float,
                   start_s: float, first_token_s: float, end_s: float, batch: int = 1, peak_memory_bytes: int = 0,
                   avg_memory_bytes: int = 0, quality_score: float | None = None, repeat: int = 0,
                   error: str | None = None) -> "BenchmarkResult":
        """Derives every latency field from four clock readings (seconds), so the fields agree by construction."""
        total_ms = (end_s - arrival_s) * 1e3
        ttft_ms = (first_token_s - arrival_s) * 1e3
        tps = output_tokens / (total_ms / 1e3) if total_ms > 0 else 0.0
        tpot = (total_ms - ttft_ms) / (output_tokens - 1) if output_tokens > 1 else None
        return cls(model=model, request_id=request_id, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                   batch=batch, ttft_ms=ttft_ms, tokens_per_s=tps, total_latency_ms=total_ms,
                   time_per_output_token_ms=tpot, peak_memory_bytes=peak_memory_bytes,
                   avg_memory_bytes=avg_memory_bytes, quality_score=quality_score, arrival_s=arrival_s,
                   start_s=start_s, end_s=end_s, repeat=repeat, error=error)


@dataclass
class Percentiles:
    p50: float
    p95: float
    p99: float
    mean: float
    count: int


def percentile(values, q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks: position q/100 * (n - 1)."""
    if not 0 <= q <= 100:
        raise ValueError(f"q: expected a percentile in [0, 100], got {q}")
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = q / 100 * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values) -> Percentiles:
    """p50/p95/p99/mean of the non-None values; NaN when there are none."""
    xs = [float(v) for v in values if v is not None]
    mean = statistics.fmean(xs) if xs else math.nan
    return Percentiles(percentile(xs, 50), percentile(xs, 95), percentile(xs, 99), mean, len(xs))


@dataclass
class RunResult:
    """One model on one workload. `summary[field]` holds p50/p95/p99/mean of that per-request field.

    With several repeats, each summary number and the throughput are the median over repeats of that repeat's
    value (medians keep p50 <= p95 <= p99). Memory: peak and time-average over the run, from `memory_source`
    ("cuda-allocator", "process-rss" or "none").
    """

    model: str
    workload: str
    mode: str  # "closed" (concurrency N) or "open" (arrival times)
    concurrency: int
    requests: list[BenchmarkResult]
    summary: dict[str, Percentiles]
    throughput_tokens_per_s: float
    throughput_requests_per_s: float
    duration_s: float
    peak_memory_bytes: int
    avg_memory_bytes: int
    memory_source: str
    failed_requests: int
    max_start_lag_ms: float  # worst (start - scheduled arrival) in open loop: how well the driver kept the schedule
    quality_score: float | None
    device: str
    dtype: str
    versions: dict[str, str]
    date: str
    command: str
    repeats: int = 1
    warmup: int = 0
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_requests(cls, requests: list[BenchmarkResult], **meta) -> "RunResult":
        """Builds a RunResult from per-request results; `meta` gives every field not derived from the requests
        (model, workload, mode, concurrency, peak/avg memory, memory_source, quality_score, environment, ...)."""
        summary, tps, rps, duration = _summarize_requests(requests)
        failed = sum(r.error is not None for r in requests)
        lags = [(r.start_s - r.arrival_s) * 1e3 for r in requests]
        return cls(requests=list(requests), summary=summary, throughput_tokens_per_s=tps,
                   throughput_requests_per_s=rps, duration_s=duration, failed_requests=failed,
                   max_start_lag_ms=max(lags, default=0.0), repeats=len({r.repeat for r in requests}) or 1, **meta)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "RunResult":
        """Inverse of to_dict; `source` names the file in errors."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object at the top level, got {type(d).__name__}")
        version = d.get("schema_version")
        if version is None:
            raise SchemaVersionError(f"{source}: no schema_version (not an ssmkit results file?); this ssmkit reads "
                                     f"schema version {SCHEMA_VERSION}")
        if version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{source}: results schema version {version!r}, but this ssmkit reads schema version "
                f"{SCHEMA_VERSION}; re-run `ssmkit bench` with this version to produce a comparable file")
        d = dict(d)
        _check_keys(cls, d, source)
        reqs = []
        for i, r in enumerate(d["requests"]):
            if not isinstance(r, dict):
                raise ValueError(f"{source}: requests[{i}]: expected an object, got {type(r).__name__}")
            _check_keys(BenchmarkResult, r, f"{source}: requests[{i}]")
            reqs.append(BenchmarkResult(**r))
        d["requests"] = reqs
        summary = {}
        for k, v in d["summary"].items():
            _check_keys(Percentiles, v, f"{source}: summary[{k!r}]")
            summary[k] = Percentiles(**v)
        d["summary"] = summary
        return cls(**d)

    def save(self, path) -> None:
        """Writes JSON (NaN, e.g. percentiles of an empty set, is written as null)."""
        Path(path).write_text(json.dumps(_nan_to_none(self.to_dict()), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path) -> "RunResult":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
        result = cls.from_dict(data, source=str(path))
        for p in result.summary.values():  # null percentiles come back as NaN
            for f in ("p50", "p95", "p99", "mean"):
                if getattr(p, f) is None:
                    setattr(p, f, math.nan)
        return result


def _summarize_requests(requests: list[BenchmarkResult]) -> tuple[dict[str, Percentiles], float, float, float]:
    """(summary, output tokens/s, requests/s, duration s) over the successful requests, median over repeats.

    Duration of a repeat runs from its first arrival to its last end; throughput counts successful requests only.
    """
    by_repeat: dict[int, list[BenchmarkResult]] = {}
    for r in requests:
        by_repeat.setdefault(r.repeat, []).append(r)
    per_repeat = []
    for reqs in by_repeat.values():
        ok = [r for r in reqs if r.error is None]
        duration = max(r.end_s for r in reqs) - min(r.arrival_s for r in reqs)
        tokens = sum(r.output_tokens for r in ok)
        per_repeat.append(({k: summarize(getattr(r, k) for r in ok) for k in SUMMARIZED},
                           tokens / duration if duration > 0 else 0.0,
                           len(ok) / duration if duration > 0 else 0.0, duration))
    if not per_repeat:
        return {k: summarize([]) for k in SUMMARIZED}, 0.0, 0.0, 0.0
    if len(per_repeat) == 1:
        return per_repeat[0]
    med = statistics.median
    summary = {k: Percentiles(*(med(getattr(s[0][k], f) for s in per_repeat) for f in ("p50", "p95", "p99", "mean")),
                              count=sum(s[0][k].count for s in per_repeat)) for k in SUMMARIZED}
    return summary, med(s[1] for s in per_repeat), med(s[2] for s in per_repeat), med(s[3] for s in per_repeat)


def _check_keys(cls, d: dict, source: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - d.keys())
    unknown = sorted(d.keys() - names)
    problems = ([f"missing fields {missing}"] if missing else []) + ([f"unknown fields {unknown}"] if unknown else [])
    if problems:
        raise ValueError(f"{source}: " + ", ".join(problems))


def _nan_to_none(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x
