"""The end-to-end demo behind `make demo`: every capability on CPU with embedded defaults, in order."""

from __future__ import annotations

import time


def section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def demo_operators(quick: bool) -> None:
    from ssmkit.bench.ops import bench_selective_scan, bench_ssd, markdown_table

    section("Operators: SSD evaluation orders and the selective scan on CPU (float32)")
    seqlens = [256] if quick else [256, 1024]
    print(markdown_table(bench_ssd(seqlens) + bench_selective_scan(seqlens)))
    print("quadratic grows as L^2 in time and memory; chunked grows as L. Full table: benchmarks/results/.")


def run_demo(quick: bool = False) -> int:
    t0 = time.perf_counter()
    demo_operators(quick)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s")
    return 0
