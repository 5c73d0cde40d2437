"""Side-by-side timing and peak memory of the operators' evaluation orders (the ops benchmark and the demo)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .tensor_memory import PeakTensorMemory


@dataclass
class OpTiming:
    op: str
    impl: str
    seqlen: int
    ms: float
    peak_mb: float
    max_abs_err: float  # against the first impl of the row group (the reference)


def best_ms(fn, repeats: int = 3, warmup: int = 1) -> float:
    """The fastest of `repeats` timed runs: on a shared machine other work only ever adds time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times)


def peak_mb(fn) -> float:
    with PeakTensorMemory() as mem:
        fn()
    return mem.peak_bytes / 2**20


def ssd_inputs(seqlen, batch=1, nheads=4, headdim=32, ngroups=1, dstate=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, seqlen, nheads, headdim, generator=g),
        dt=torch.randn(batch, seqlen, nheads, generator=g) * 0.5 - 3.0,
        A=-torch.exp(torch.randn(nheads, generator=g) * 0.5),
        B=torch.randn(batch, seqlen, ngroups, dstate, generator=g) * dstate ** -0.5,
        C=torch.randn(batch, seqlen, ngroups, dstate, generator=g) * dstate ** -0.5,
        D=torch.randn(nheads, generator=g),
        dt_softplus=True,
    )


def bench_ssd(seqlens, impls=("reference", "quadratic", "chunked"), max_quadratic_len=8192, max_reference_len=8192,
              repeats=3):
    """Times each SSD evaluation order in one process; returns one OpTiming per (impl, seqlen) that ran."""
    from ssmkit.ops.ssd import ssd

    rows = []
    for L in seqlens:
        args = ssd_inputs(L)
        ref = None
        for impl in impls:
            if (impl == "quadratic" and L > max_quadratic_len) or (impl == "reference" and L > max_reference_len):
                continue
            with torch.no_grad():
                run = lambda: ssd(**args, impl=impl, chunk_size=64)  # noqa: E731
                y = run()
                ref = y if ref is None else ref
                err = (y - ref).abs().max().item()
                rows.append(OpTiming("ssd", impl, L, best_ms(run, repeats), peak_mb(run), err))
    return rows


def bench_selective_scan(seqlens, impls=("reference", "parallel"), dim=64, dstate=16, repeats=3):
    from ssmkit.ops.selective_scan import selective_scan

    rows = []
    for L in seqlens:
        g = torch.Generator().manual_seed(L)
        args = dict(x=torch.randn(1, L, dim, generator=g), dt=torch.randn(1, L, dim, generator=g) * 0.5 - 3.0,
                    A=-torch.exp(torch.randn(dim, dstate, generator=g) * 0.5),
                    B=torch.randn(1, L, 1, dstate, generator=g), C=torch.randn(1, L, 1, dstate, generator=g),
                    dt_softplus=True)
        ref = None
        for impl in impls:
            with torch.no_grad():
                run = lambda: selective_scan(**args, impl=impl)  # noqa: E731
                y = run()
                ref = y if ref is None else ref
                rows.append(OpTiming("selective_scan", impl, L, best_ms(run, repeats), peak_mb(run),
                                     (y - ref).abs().max().item()))
    return rows


def markdown_table(rows) -> str:
    """One row per (op, seqlen), one column group per impl: ms, peak MiB, and the speedup over the first impl."""
    lines = ["| op | seqlen | impl | time (ms) | peak tensor memory (MiB) | vs reference | max abs err |",
             "|---|---:|---|---:|---:|---:|---:|"]
    base = {}
    for r in rows:
        key = (r.op, r.seqlen)
        base.setdefault(key, r.ms)
        lines.append(f"| {r.op} | {r.seqlen} | {r.impl} | {r.ms:.2f} | {r.peak_mb:.1f} | "
                     f"{base[key] / r.ms:.1f}x | {r.max_abs_err:.1e} |")
    return "\n".join(lines)
