"""The logic of `ssmkit compare`, `ssmkit gate` and `ssmkit tokens compare`: plain arguments in, output printed,
exit code returned. Bad input raises ValueError or FileNotFoundError, which ssmkit.cli reports with exit code 2.
"""

from __future__ import annotations

from .compare import compare, format_comparison
from .gate import format_gate, gate_checks
from .results import RunResult
from .tokens import compare_tokenizers, format_token_comparison, load_tokenizer_spec, read_texts


def compare_command(path_a: str, path_b: str) -> int:
    """Prints B / A ratios of two results files; returns 0."""
    a, b = RunResult.load(path_a), RunResult.load(path_b)
    print(format_comparison(a, b, compare(a, b)))
    return 0


def gate_command(path: str, *, min_quality: float | None = None, max_p95_latency_ms: float | None = None,
                 max_memory_gb: float | None = None, max_p95_ttft_ms: float | None = None,
                 min_throughput_tokens_per_s: float | None = None, max_failed_fraction: float = 0.0) -> int:
    """Prints a table of every check; returns 1 when any check fails, 0 when all pass."""
    result = RunResult.load(path)
    checks = gate_checks(result, min_quality=min_quality, max_p95_latency_ms=max_p95_latency_ms,
                         max_memory_gb=max_memory_gb, max_p95_ttft_ms=max_p95_ttft_ms,
                         min_throughput_tokens_per_s=min_throughput_tokens_per_s,
                         max_failed_fraction=max_failed_fraction)
    print(format_gate(result, checks))
    return 0 if all(c.passed for c in checks) else 1


def tokens_compare_command(spec_a: str, spec_b: str, files: list[str], context_tokens: int = 4096) -> int:
    """Prints token counts of each file under tokenizers A and B ('byte' or a tokenizer.json path); returns 0."""
    if not files:
        raise ValueError("files: expected at least one text file")
    if context_tokens < 1:
        raise ValueError(f"context_tokens: expected >= 1, got {context_tokens}")
    rows = compare_tokenizers(load_tokenizer_spec(spec_a), load_tokenizer_spec(spec_b), read_texts(files))
    print(format_token_comparison(rows, spec_a, spec_b, context_tokens))
    return 0
