"""Mamba-1 selective scan on GPU: ssmkit's Triton kernels vs its torch paths (parallel scan, reference loop).

Validates first (Triton vs the float64 parallel scan: y, final state, every gradient), then times the forward and
forward+backward at L = 1K..16K (do_bench median, L2 flushed; the forward also replayed from a CUDA graph) and
the decode step inside a CUDA graph, each against a measured device-to-device copy: achieved bandwidth is the
bytes that must move (x, dt, B, C, z in and y out; the backward adds dy in and dx, ddt, dB, dC, dz out) / time.

    python benchmarks/mamba1_gpu.py --out benchmarks/results/mamba1-gpu-<device>-<date>.md [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ssmkit.bench.kernel_timing import fmt, rel_error, start_kernel_run  # noqa: E402
from ssmkit.ops.selective_scan import selective_scan_parallel, selective_scan_reference  # noqa: E402
from ssmkit.ops.selective_scan import selective_scan_step  # noqa: E402
from ssmkit.ops.selective_scan.triton import selective_scan_step_triton, selective_scan_triton  # noqa: E402
from ssmkit.ops.ssd.triton.plan import _TUNED  # noqa: E402

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")


@dataclass
class BenchConfig:
    out: str = "mamba1-gpu.md"
    total_tokens: int = 16384  # batch = total_tokens // L, so L = 16K runs at batch 1
    dim: int = 2048  # d_inner of a ~370M Mamba (d_model 1024)
    dstate: int = 16
    lengths: list = field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384])
    loop_up_to: int = 2048  # the reference loops over t in Python: time it only up to this length
    step_batches: list = field(default_factory=lambda: [1, 16, 64, 256])


def parse() -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=BenchConfig.out)
    p.add_argument("--quick", action="store_true", help="two lengths, two decode batches (smoke run)")
    a = p.parse_args()
    cfg = BenchConfig(out=a.out)
    if a.quick:
        cfg.lengths, cfg.step_batches, cfg.loop_up_to = [1024, 16384], [1, 64], 1024
    return cfg


def scan_inputs(batch, seqlen, dim, dstate, dtype=torch.bfloat16, seed=0):
    """Mamba-1 ranges: dt' = softplus(dt + bias) ~ 0.001..0.1, A = -(1..dstate) (S4D-real), x, z, B, C ~ N(0, 1)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    dt0 = torch.exp(torch.rand(dim, device="cuda", generator=g) * 4.6 - 6.9)
    return dict(x=rnd(batch, seqlen, dim).to(dtype), dt=(0.5 * rnd(batch, seqlen, dim)).to(dtype),
                A=-torch.arange(1, dstate + 1, device="cuda", dtype=torch.float32).repeat(dim, 1),
                B=rnd(batch, seqlen, 1, dstate).to(dtype), C=rnd(batch, seqlen, 1, dstate).to(dtype),
                D=torch.ones(dim, device="cuda"), z=rnd(batch, seqlen, dim).to(dtype),
                dt_bias=dt0 + torch.log(-torch.expm1(-dt0)))


def call(fn, t, **kw):
    return fn(**{k: t[k] for k in NAMES}, dt_softplus=True, **kw)




def validate(cfg, log):
    """Triton vs the float64 parallel scan at one benchmark shape: y, final state and every gradient."""
    t = scan_inputs(2, 4096, cfg.dim, cfg.dstate, seed=1)
    dy = torch.randn_like(t["x"])
    outs = {}
    for name, fn, dtype in (("triton", selective_scan_triton, None), ("f64", selective_scan_parallel, torch.float64)):
        leaves = {k: v.detach().to(dtype or v.dtype).requires_grad_() for k, v in t.items()}
        y, final = call(fn, leaves, return_final_state=True)
        grads = torch.autograd.grad((y, final), [leaves[k] for k in NAMES], (dy.to(y.dtype), torch.zeros_like(final)))
        outs[name] = (y, final, grads)
    errs = {"y": rel_error(outs["triton"][0], outs["f64"][0]), "final": rel_error(outs["triton"][1], outs["f64"][1])}
    errs.update({f"d{k}": rel_error(a, b) for k, a, b in zip(NAMES, outs["triton"][2], outs["f64"][2])})
    log("validate bf16 b2 L4096 vs float64 parallel: " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    ok = errs["y"] < 1e-2 and errs["final"] < 1e-2 and all(v < 2e-2 for k, v in errs.items() if k[0] == "d")
    return ok, errs




def scan_bytes(batch, seqlen, dim, dstate, elt=2):
    """Bytes that must move: forward (x, dt, z in, y out, B, C in) and backward (those inputs and dy in, their
    gradients out)."""
    act, bc = batch * seqlen * dim * elt, batch * seqlen * dstate * elt
    fwd = 4 * act + 2 * bc
    return fwd, fwd + (4 * act + 2 * bc) + (3 * act + 2 * bc)


def bench_scan(fn, batch, seqlen, cfg, graph):
    t = {k: v.requires_grad_() for k, v in scan_inputs(batch, seqlen, cfg.dim, cfg.dstate).items()}
    dy = torch.randn_like(t["x"])
    leaves = [t[k] for k in NAMES]

    def fwd():
        with torch.no_grad():
            return call(fn, t)

    def fb():
        return torch.autograd.grad(call(fn, t), leaves, dy)

    f = do_bench(fwd, warmup=10, rep=50, return_mode="median")
    f_graph = None
    if graph:
        try:
            f_graph = do_bench_cudagraph(fwd, rep=50, return_mode="median")
        except Exception as e:  # a path that syncs the host cannot be captured
            f_graph = f"n/a ({type(e).__name__})"
    return f, f_graph, do_bench(fb, warmup=5, rep=30, grad_to_none=leaves, return_mode="median")


def bench_step(batch, state_dtype, cfg, copy_bw):
    """One decode step inside a CUDA graph, stepping through enough states to miss L2."""
    dim, N = cfg.dim, cfg.dstate
    state_bytes = batch * dim * N * torch.tensor([], dtype=state_dtype).element_size()
    nbuf = max(2, min(200, (512 << 20) // state_bytes))
    states = [torch.randn(batch, dim, N, device="cuda").to(state_dtype) for _ in range(nbuf)]
    t = {k: (v[:, 0] if v.dim() >= 3 else v) for k, v in scan_inputs(batch, 1, dim, N).items()}  # one token
    kw = dict(D=t["D"], z=t["z"], dt_bias=t["dt_bias"], dt_softplus=True)
    args = [t[k] for k in ("x", "dt", "A", "B", "C")]
    expected = states[0].clone()
    y_ref = selective_scan_step(expected, *args, **kw)
    y = selective_scan_step_triton(states[0], *args, **kw)
    err = max(rel_error(y, y_ref), rel_error(states[0].float(), expected.float()))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for s in states:
            selective_scan_step_triton(s, *args, **kw)
    graph.replay()
    ms = do_bench(graph.replay, warmup=10, rep=100, return_mode="median") / nbuf
    io_bytes = 2 * state_bytes + batch * (4 * dim + 2 * N) * 2
    return dict(batch=batch, state=str(state_dtype)[6:], us=ms * 1e3, bw=io_bytes / (ms * 1e-3),
                frac=io_bytes / (ms * 1e-3) / copy_bw, err=err)




def main():
    cfg = parse()
    log, errs, copy_bw = start_kernel_run(validate, cfg)
    lines, dev = log.lines, torch.cuda.get_device_name()
    rows = []
    for L in cfg.lengths:
        batch = max(1, cfg.total_tokens // L)
        fwd_bytes, fb_bytes = scan_bytes(batch, L, cfg.dim, cfg.dstate)
        r = dict(L=L, batch=batch)
        r["tri_f"], r["tri_f_g"], r["tri_fb"] = bench_scan(selective_scan_triton, batch, L, cfg, graph=True)
        r["tri_f_bw"] = fwd_bytes / (r["tri_f"] * 1e-3) / copy_bw
        r["tri_fb_bw"] = fb_bytes / (r["tri_fb"] * 1e-3) / copy_bw
        r["par_f"], _, r["par_fb"] = bench_scan(selective_scan_parallel, batch, L, cfg, graph=False)
        if L <= cfg.loop_up_to:
            r["ref_f"], _, r["ref_fb"] = bench_scan(selective_scan_reference, batch, L, cfg, graph=False)
        log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
        rows.append(r)
    steps = [bench_step(b, sd, cfg, copy_bw) for sd in (torch.float32, torch.bfloat16) for b in cfg.step_batches]
    for s in steps:
        log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}))
    log("tuned configs: " + "; ".join(f"{name} {key} -> {c}" for (name, key), c in _TUNED.items()
                                      if name.startswith("selective_scan")))

    table = ["| L | batch | triton fwd | graph | of copy | parallel fwd | loop fwd | triton fwd+bwd | of copy | "
             "parallel fwd+bwd | loop fwd+bwd |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['L']} | {r['batch']} | {fmt(r['tri_f'])} | {fmt(r['tri_f_g'])} | "
                     f"{100 * r['tri_f_bw']:.0f}% | {fmt(r['par_f'])} | {fmt(r.get('ref_f'))} | {fmt(r['tri_fb'])} | "
                     f"{100 * r['tri_fb_bw']:.0f}% | {fmt(r['par_fb'])} | {fmt(r.get('ref_fb'))} |")
    table += ["", f"| decode batch | state | us (graph) | GB/s | of copy {copy_bw / 1e12:.2f} TB/s | max rel err |",
              "|---|---|---|---|---|---|"]
    table += [f"| {s['batch']} | {s['state']} | {s['us']:.2f} | {s['bw'] / 1e9:.0f} | {100 * s['frac']:.0f}% | "
              f"{s['err']:.1e} |" for s in steps]
    today = datetime.date.today().isoformat()
    md = [f"# Mamba-1 selective scan on GPU ({dev}, {today})", "", f"torch {torch.__version__}, triton "
          f"{triton.__version__}, python {platform.python_version()}; bf16 activations, float32 A/D/dt_bias, "
          f"dim {cfg.dim}, dstate {cfg.dstate}, ngroups 1, z and D on, {cfg.total_tokens} tokens per call; ms, "
          "do_bench median (L2 flushed) and CUDA-graph replay median; 'of copy' = bytes that must move / time "
          "/ measured copy bandwidth.", "", "Command: `python benchmarks/mamba1_gpu.py --out <file>`", "",
          "Validation (bf16, b=2, L=4096, rel. to the float64 parallel scan): "
          + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()), "", *table, "", "Log:", "", "```", *lines, "```"]
    Path(cfg.out).write_text("\n".join(md) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
