"""The fused RMSNorm + linear kernel (ssmkit.ops.norm.norm_linear) against the two unfused launches, over launch
shapes, at the projections of a Mamba-2 decode step. Prints one table per (projection, rows): the composed ops
(add_rms_norm or gated_rms_norm, then F.linear / cuBLAS), the kernel at pick_config's shape, and the fastest
shapes of the sweep, each timed per call inside a CUDA graph. The weight is one of enough copies to overflow L2
(150 MB), as in a decode step whose layers each read their own weights once.

    python3 benchmarks/norm_linear_gpu.py [--quick]    # needs a CUDA device
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

import ssmkit.ops.norm
from ssmkit.bench.kernel_timing import replay_ms
from ssmkit.ops.norm import norm_linear
from ssmkit.ops.norm.triton.linear import Config, norm_linear_fwd, pick_config

# (name, K, N, form): Mamba-2 130M and 1.3B in_proj after the residual add + pre-norm, out_proj after the gated
# norm; "plain": the kernel without a norm (linear_fwd) against F.linear alone, at Transformer++ 1.3B's and
# Mamba 1.4B's projections.
SHAPES = [("130m in_proj", 768, 3352, "residual"), ("130m out_proj", 1536, 768, "gated"),
          ("1.3b in_proj", 2048, 8512, "residual"), ("1.3b out_proj", 4096, 2048, "gated"),
          ("llama-1.3b q/o", 2048, 2048, "plain"), ("llama-1.3b up", 2048, 5504, "plain"),
          ("llama-1.3b down", 5504, 2048, "plain"), ("mamba-1.4b in_proj", 2048, 8192, "plain"),
          ("mamba-1.4b out_proj", 4096, 2048, "plain"), ("mamba-1.4b x_proj", 4096, 160, "plain")]
ROWS = (1, 4, 16)
CALLS, REPLAYS, L2_BYTES = 48, 10, 150 * 2 ** 20


def sweep_configs(rows: int, quick: bool) -> list[Config]:
    dots = [Config(bn, bk, True, 4, st) for bn, bk, st in itertools.product((16, 32, 64), (128, 256), (1, 3))]
    gemv = [Config(bn, bk, False, w, st) for bn, bk, w, st in itertools.product((2, 4, 8), (512, 1024), (4, 8),
                                                                               (1, 3))]
    if rows == 1:  # the two-pass pick of 2026-11-25, the whole row in one pass, and that on a persistent grid
        return [Config(4, 1024, False, 4, 1)] + [
            Config(bn, 0, False, w, 1) for bn, w in ((1, 4), (2, 4), (2, 8), (4, 4), (4, 8), (4, 16))] + [
            Config(bn, 0, False, w, 1, pps) for bn, w, pps in itertools.product((2, 4), (4, 8), (2, 4, 8))]
    if quick:
        dots, gemv = dots[::3], gemv[::4]
    return dots + (gemv if rows <= 4 else [])


def inputs(rows, k, n, form, copies):
    g = torch.Generator(device="cuda").manual_seed(0)
    rnd = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=g, device="cuda")).bfloat16()  # noqa: E731
    kw = dict(x=rnd(rows, k), norm_weight=1 + 0.1 * rnd(k))
    if form == "gated":
        kw.update(z=rnd(rows, k), group_size=k)
    elif form == "plain":
        kw.update(norm_weight=None)
    else:
        kw.update(residual=rnd(rows, k, scale=3.0).float(), residual_dtype=torch.float32)
    weights = [rnd(n, k, scale=k ** -0.5) for _ in range(copies)]
    return kw, weights


def per_call_us(fn, weights) -> float:
    """One call's GPU time inside a CUDA graph of CALLS calls rotating over the weight copies."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for w in weights[:3]:
            fn(w)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(CALLS):
            fn(weights[i % len(weights)])
    return replay_ms(graph, REPLAYS) * 1e3 / CALLS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a third of the sweep")
    ap.add_argument("--rows", default=",".join(map(str, ROWS)), help="comma-separated row counts")
    ap.add_argument("--only", default="", help="comma-separated substrings of the projection names to run")
    args = ap.parse_args()
    rows_list = [int(r) for r in args.rows.split(",")]
    shapes = [s for s in SHAPES if not args.only or any(o in s[0] for o in args.only.split(","))]
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    summary = []
    for (name, k, n, form), rows in itertools.product(shapes, rows_list):
        copies = max(3, math.ceil(L2_BYTES / (2 * n * k)))
        kw, weights = inputs(rows, k, n, form, copies)
        gemm = per_call_us(lambda w: torch.nn.functional.linear(kw["x"], w), weights)
        if form == "plain":
            want = torch.nn.functional.linear(kw["x"].double(), weights[0].double()).float()
            composed = gemm
        else:
            want = norm_linear(weight=weights[0], **kw, impl="reference")[0].float()
            ssmkit.ops.norm.NORM_LINEAR_AUTO = False  # impl="auto" composes the Triton norm and cuBLAS
            composed = per_call_us(lambda w: norm_linear(weight=w, **kw, impl="auto"), weights)
        times = {}
        for cfg in sweep_configs(rows, args.quick):
            def call(w, cfg=cfg):
                return norm_linear_fwd(kw["x"], kw.get("residual"), kw.get("z"), kw["norm_weight"], 1e-6,
                                       kw.get("group_size", k), w, kw.get("residual_dtype"), torch.bfloat16, cfg)
            try:
                got = call(weights[0])[0].float()
            except Exception as e:  # a shape the compiler refuses (registers, shared memory)
                print(f"  {name} rows {rows} {cfg}: {type(e).__name__}")
                continue
            err = (got - want).abs().max().item() / want.abs().max().item()
            if err > 2e-2:
                print(f"  {name} rows {rows} {cfg}: WRONG (max rel err {err:.3g})")
                continue
            times[cfg] = per_call_us(call, weights)
        best = sorted(times, key=times.get)[:3]
        picked = pick_config(rows, k, n, form != "plain")
        picked_us = times.get(picked, float("nan"))
        bytes_gb = 2 * n * k / 1e3
        print(f"== {name} rows {rows}: composed (norm + cuBLAS) {composed:.2f} us, cuBLAS alone {gemm:.2f} us, "
              f"picked {picked_us:.2f} us ({picked})")
        for cfg in best:
            print(f"   {times[cfg]:6.2f} us  {bytes_gb / times[cfg]:5.2f} GB/s  {cfg}")
        summary.append((name, rows, composed, gemm, picked_us, times[best[0]], best[0]))
    print("\n| projection | rows | composed us | cuBLAS alone us | fused (picked) us | fused best us | best config |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, rows, composed, gemm, picked_us, best_us, cfg in summary:
        print(f"| {name} | {rows} | {composed:.2f} | {gemm:.2f} | {picked_us:.2f} | {best_us:.2f} | "
              f"{tuple(cfg)} |")


if __name__ == "__main__":
    main()
