"""Side-by-side comparison of two benchmark runs: B / A ratios of latency, throughput and memory.

A ratio above 1 means B has more of it: more time to first token, more tokens per second, more memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .results import GB, RunResult
from .table import fmt_number, markdown_table


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    lower_is_better: bool
    read: Callable[[RunResult], float]


METRICS = (
    Metric("ttft_p50_ms", "TTFT p50", "ms", True, lambda r: r.summary["ttft_ms"].p50),
    Metric("ttft_p95_ms", "TTFT p95", "ms", True, lambda r: r.summary["ttft_ms"].p95),
    Metric("tokens_per_s_p50", "tokens/s per request p50", "tok/s", False, lambda r: r.summary["tokens_per_s"].p50),
    Metric("throughput_tokens_per_s", "throughput", "tok/s", False, lambda r: r.throughput_tokens_per_s),
    Metric("latency_p95_ms", "total latency p95", "ms", True, lambda r: r.summary["total_latency_ms"].p95),
    Metric("peak_memory_gb", "peak memory", "GiB", True, lambda r: r.peak_memory_bytes / GB),
)


@dataclass
class Ratio:
    """One metric of A and B; `ratio` = b / a (inf when only A is 0, NaN when both are 0 or one is missing)."""

    metric: str
    label: str
    unit: str
    a: float
    b: float
    ratio: float
    lower_is_better: bool

    @property
    def better(self) -> str:
        """'A', 'B' or '=' (equal within 0.5 %, or not comparable)."""
        if math.isnan(self.ratio) or abs(self.ratio - 1) <= 0.005:
            return "="
        return "B" if (self.ratio < 1) == self.lower_is_better else "A"


def ratio(a: float, b: float) -> float:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or (a == 0 and b == 0):
        return math.nan
    return math.inf if a == 0 else b / a


def compare(results_a: RunResult, results_b: RunResult) -> dict[str, Ratio]:
    """B / A for each metric in METRICS, keyed by metric key (e.g. 'latency_p95_ms')."""
    out = {}
    for m in METRICS:
        a, b = m.read(results_a), m.read(results_b)
        out[m.key] = Ratio(m.key, m.label, m.unit, a, b, ratio(a, b), m.lower_is_better)
    return out


def comparison_notes(results_a: RunResult, results_b: RunResult) -> list[str]:
    """Warnings about differences that make the ratios compare more than the models."""
    notes = []
    for field in ("workload", "mode", "concurrency", "device", "dtype"):
        va, vb = getattr(results_a, field), getattr(results_b, field)
        if va != vb:
            notes.append(f"note: {field} differs (A: {va}, B: {vb}); the ratios include that difference")
    if results_a.memory_source != results_b.memory_source:
        notes.append(f"note: memory measured differently (A: {results_a.memory_source}, "
                     f"B: {results_b.memory_source}); the memory ratio is not like for like")
    for name, r in (("A", results_a), ("B", results_b)):
        if r.failed_requests:
            notes.append(f"note: {name} has {r.failed_requests} failed requests, left out of its percentiles")
    return notes


def format_comparison(results_a: RunResult, results_b: RunResult, ratios: dict[str, Ratio] | None = None) -> str:
    """The A and B header lines, a table (metric, A, B, B/A, better) and notes."""
    ratios = ratios or compare(results_a, results_b)
    head = [f"A: {results_a.model} ({results_a.workload}, {results_a.device}, {results_a.date})",
            f"B: {results_b.model} ({results_b.workload}, {results_b.device}, {results_b.date})",
            "B/A > 1: B has more (more time, more tokens/s, more memory); 'better' reads the direction per metric.", ""]
    rows = [[f"{r.label} ({r.unit})", fmt_number(r.a), fmt_number(r.b), _fmt_ratio(r.ratio), r.better]
            for r in ratios.values()]
    table = markdown_table(["metric", "A", "B", "B/A", "better"], rows)
    notes = comparison_notes(results_a, results_b)
    return "\n".join(head + [table] + ([""] + notes if notes else []))


def _fmt_ratio(x: float) -> str:
    return "n/a" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.3f}x")
