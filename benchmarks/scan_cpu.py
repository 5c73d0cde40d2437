"""CPU timing of the selective scan: the log-depth parallel form against the reference loop over t.

Validates the parallel output against the reference first (float32 tolerance), then times both in one process.
Shapes: batch 1, dim 64, dstate 16, ngroups 1, float32, no grad.   python benchmarks/scan_cpu.py [--sizes ...]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ssmkit.ops.selective_scan import selective_scan

DEFAULT_SIZES = (256, 512, 1024, 2048, 4096, 8192)
VALIDATION_REL_RMS = 1e-5  # float32 row of tests/compare.py


def make_inputs(seqlen, dim=64, dstate=16, batch=1, dtype=torch.float32, seed=0):
    """(x, dt, A, B, C) as in a Mamba-1 layer: dt before softplus ~ N(-3, 0.5), A = -exp(N(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seqlen, dim, generator=g)
    dt = torch.randn(batch, seqlen, dim, generator=g) * 0.5 - 3.0
    A = -torch.exp(torch.randn(dim, dstate, generator=g))
    B = torch.randn(batch, seqlen, 1, dstate, generator=g)
    C = torch.randn(batch, seqlen, 1, dstate, generator=g)
    return [t.to(dtype) for t in (x, dt, A, B, C)]


def median_ms(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def run(sizes=DEFAULT_SIZES, *, dim=64, dstate=16, batch=1, dtype=torch.float32, repeats=3) -> list[dict]:
    """One dict per seqlen: median ms of each impl, the speedup, the errors of the validation run, and the cost of
    the parallel form in units of one elementwise pass (torch.exp) over a (batch, seqlen, dim, dstate) tensor,
    the memory traffic any scan that materializes its states pays at least once.
    """
    rows = []
    for seqlen in sizes:
        args = make_inputs(seqlen, dim, dstate, batch, dtype)
        with torch.no_grad():
            y_ref = selective_scan(*args, dt_softplus=True, impl="reference").double()
            y_par = selective_scan(*args, dt_softplus=True, impl="parallel").double()
            diff = y_par - y_ref
            rel = (diff.pow(2).mean().sqrt() / y_ref.pow(2).mean().sqrt()).item()
            if rel > VALIDATION_REL_RMS:
                raise RuntimeError(f"parallel differs from reference at seqlen {seqlen}: rel RMS {rel:.2e}")
            ref_ms = median_ms(lambda: selective_scan(*args, dt_softplus=True, impl="reference"), repeats, warmup=0)
            par_ms = median_ms(lambda: selective_scan(*args, dt_softplus=True, impl="parallel"), repeats)
            states = torch.rand(batch, seqlen, dim, dstate, dtype=dtype)
            pass_ms = median_ms(lambda: torch.exp(states), repeats)
        rows.append({
            "seqlen": seqlen, "dim": dim, "dstate": dstate, "batch": batch, "dtype": str(dtype).removeprefix("torch."),
            "reference_ms": ref_ms, "parallel_ms": par_ms, "speedup": ref_ms / par_ms,
            "state_pass_ms": pass_ms, "parallel_in_state_passes": par_ms / pass_ms,
            "rel_rms_err": rel, "max_abs_err": diff.abs().max().item(), "threads": torch.get_num_threads(),
        })
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| seqlen | reference (ms) | parallel (ms) | speedup | parallel / one state pass | rel RMS err | max abs err |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seqlen']} | {r['reference_ms']:.1f} | {r['parallel_ms']:.2f} | {r['speedup']:.1f}x | "
            f"{r['parallel_in_state_passes']:.1f} | {r['rel_rms_err']:.1e} | {r['max_abs_err']:.1e} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; on a machine shared with other jobs, 1 avoids OpenMP stalls")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.sizes, repeats=args.repeats)
    print(f"selective scan on CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch 1, dim 64, dstate 16, ngroups 1, float32, no grad; "
          f"median of {args.repeats} runs\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
