"""The regression gate: checks a benchmark run against limits and says what failed and by how much.

Checks: quality score (min), p95 total latency and p95 TTFT (max), peak memory in GiB (max), throughput (min),
and the fraction of failed requests (max, 0 by default: a run whose requests errored does not pass silently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .results import GB, RunResult
from .table import fmt_number, markdown_table


@dataclass
class GateCheck:
    """One limit. `excess` is how far past the limit the value is (> 0 fails), in the metric's unit and in percent
    of the limit; a missing value (no quality score, no successful request) fails with excess NaN."""

    name: str
    unit: str
    kind: str  # "min" or "max"
    limit: float
    actual: float | None

    @property
    def excess(self) -> float:
        if self.actual is None or math.isnan(self.actual):
            return math.nan
        return self.actual - self.limit if self.kind == "max" else self.limit - self.actual

    @property
    def excess_pct(self) -> float:
        return math.nan if self.limit == 0 else self.excess / abs(self.limit) * 100

    @property
    def passed(self) -> bool:
        return not math.isnan(self.excess) and self.excess <= 0

    def describe(self) -> str:
        if math.isnan(self.excess):
            return "no value in the results"
        if self.passed:
            return "ok"
        word, side = ("over", "above") if self.kind == "max" else ("under", "below")
        pct = "" if math.isnan(self.excess_pct) else f" ({self.excess_pct:.1f}% {side} the limit)"
        return f"{fmt_number(self.excess)} {self.unit} {word}{pct}".replace("  ", " ")


def gate_checks(result: RunResult, *, min_quality: float | None = None, max_p95_latency_ms: float | None = None,
                max_memory_gb: float | None = None, max_p95_ttft_ms: float | None = None,
                min_throughput_tokens_per_s: float | None = None, max_failed_fraction: float = 0.0
                ) -> list[GateCheck]:
    """Every check that has a limit (None skips it), passed or not."""
    n = len(result.requests)
    candidates = [
        ("quality score", "", "min", min_quality, result.quality_score),
        ("p95 total latency", "ms", "max", max_p95_latency_ms, result.summary["total_latency_ms"].p95),
        ("p95 TTFT", "ms", "max", max_p95_ttft_ms, result.summary["ttft_ms"].p95),
        ("peak memory", "GiB", "max", max_memory_gb, result.peak_memory_bytes / GB),
        ("throughput", "tok/s", "min", min_throughput_tokens_per_s, result.throughput_tokens_per_s),
        ("failed requests", "fraction", "max", max_failed_fraction, result.failed_requests / n if n else math.nan),
    ]
    for name, _, _, limit, _ in candidates:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float))
                                  or not math.isfinite(limit) or limit < 0):
            raise ValueError(f"{name} limit: expected a finite number >= 0, got {limit!r}")
    return [GateCheck(name, unit, kind, float(limit), None if actual is None else float(actual))
            for name, unit, kind, limit, actual in candidates if limit is not None]


def gate(result: RunResult, min_quality: float | None = None, max_p95_latency_ms: float | None = None,
         max_memory_gb: float | None = None, **limits) -> list[GateCheck]:
    """The failed checks (empty: the run passes). `limits`: max_p95_ttft_ms, min_throughput_tokens_per_s,
    max_failed_fraction (see gate_checks)."""
    checks = gate_checks(result, min_quality=min_quality, max_p95_latency_ms=max_p95_latency_ms,
                         max_memory_gb=max_memory_gb, **limits)
    return [c for c in checks if not c.passed]


def format_gate(result: RunResult, checks: list[GateCheck]) -> str:
    """A table of every check (limit, actual, status, by how much) and a one-line verdict."""
    rows = [[c.name, f"{c.kind} {fmt_number(c.limit)} {c.unit}".rstrip(), fmt_number(c.actual),
             "PASS" if c.passed else "FAIL", c.describe()] for c in checks]
    failed = [c.name for c in checks if not c.passed]
    verdict = (f"gate FAILED for {result.model} ({result.workload}): {', '.join(failed)}" if failed
               else f"gate passed for {result.model} ({result.workload}): {len(checks)} checks")
    return markdown_table(["check", "limit", "actual", "status", "by how much"], rows, right_align_from=9) + \
        "\n" + verdict
