"""SSD on GPU: ssmkit's Triton kernels vs its torch chunked path vs causal attention (SDPA, flash backend).

Validates first (Triton vs the float32 chunked path and a float64 spot check), then times forward and
forward+backward with triton.testing.do_bench (median, L2 flushed) and inside a CUDA graph, a dstate sweep, and
the decode step inside a CUDA graph against a measured device-to-device copy. Prints a short table last.

    python benchmarks/ssd_gpu.py --out results.md
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
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ssmkit.bench.kernel_timing import fmt, rel_error, start_kernel_run  # noqa: E402
from ssmkit.ops.ssd.chunked import ssd_chunked  # noqa: E402
from ssmkit.ops.ssd.step import ssd_step_reference  # noqa: E402
from ssmkit.ops.ssd.triton import ssd_step_triton, ssd_triton  # noqa: E402
from ssmkit.ops.ssd.triton.plan import tuned_configs  # noqa: E402


@dataclass
class BenchConfig:
    out: str = "ssd-gpu.md"
    total_tokens: int = 65536
    nheads: int = 32
    headdim: int = 64
    dstate: int = 64
    lengths: list = field(default_factory=lambda: [512, 1024, 2048, 4096, 8192, 16384])
    dstates: list = field(default_factory=lambda: [64, 128, 256])
    batches: list = field(default_factory=lambda: [1, 4, 16, 64, 128, 256])
    skip_chunked_at: int = 1 << 30  # the torch chunked path loops over chunks in Python; skip it above this L
    step_sweep: bool = False


def parse() -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=BenchConfig.out)
    p.add_argument("--quick", action="store_true", help="two lengths, every dstate, two decode batches (smoke run)")
    p.add_argument("--decode-only", action="store_true", help="only the decode step (no lengths, no dstate sweep)")
    p.add_argument("--step-sweep", action="store_true",
                   help="also time the decode step at batch 1 over head-dim blocks x warps")
    a = p.parse_args()
    cfg = BenchConfig(out=a.out, step_sweep=a.step_sweep)
    if a.quick:
        cfg.lengths, cfg.dstates, cfg.batches = [512, 4096], [64, 128, 256], [1, 64]
    if a.decode_only:
        cfg.lengths, cfg.dstates = [], []
    return cfg


def ssd_inputs(batch, seqlen, cfg, dstate, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    h, P = cfg.nheads, cfg.headdim
    return dict(x=rnd(batch, seqlen, h, P).to(dtype), dt=(0.5 * rnd(batch, seqlen, h)).to(dtype),
                A=-torch.exp(torch.rand(h, device="cuda", generator=g) * 2.77),
                B=(rnd(batch, seqlen, 1, dstate) * dstate ** -0.5).to(dtype),
                C=(rnd(batch, seqlen, 1, dstate) * dstate ** -0.5).to(dtype), D=rnd(h),
                dt_bias=torch.log(torch.expm1(torch.exp(torch.rand(h, device="cuda", generator=g) * 4.6 - 6.9))))


def ssd_call(impl, t):
    fn = ssd_triton if impl == "triton" else ssd_chunked
    return fn(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True,
              chunk_size=64)




def validate(cfg, log):
    """Triton vs chunked (float32 math inside) at one benchmark shape, outputs and every gradient. Skipped with
    --decode-only (each decode row carries its own error against the step reference)."""
    if not cfg.lengths and not cfg.dstates:
        log("validation of the chunked forward / backward skipped (--decode-only)")
        return True, {}
    t = {k: v.requires_grad_() for k, v in ssd_inputs(4, 4096, cfg, cfg.dstate, seed=1).items()}
    dy = torch.randn_like(t["x"])
    errs = {}
    outs = {}
    for impl in ("triton", "chunked"):
        y, final = ssd_call(impl, t)
        grads = torch.autograd.grad((y, final), list(t.values()), (dy, torch.zeros_like(final)))
        outs[impl] = (y, final, grads)
    errs["y"] = rel_error(outs["triton"][0], outs["chunked"][0])
    errs["final"] = rel_error(outs["triton"][1], outs["chunked"][1])
    for name, a, b in zip(t, outs["triton"][2], outs["chunked"][2]):
        errs[f"d{name}"] = rel_error(a, b)
    log("validate bf16 b4 L4096 vs chunked: " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    ok = errs["y"] < 1e-2 and errs["final"] < 1e-2 and all(v < 2e-2 for k, v in errs.items() if k[0] == "d")
    return ok, errs


def time_pair(fn, grad_to_none=None, graph=True):
    """(do_bench median ms, CUDA graph mean ms or None)."""
    t_eager = do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")
    t_graph = None
    if graph:
        try:
            t_graph = do_bench_cudagraph(fn, rep=50, return_mode="median")
        except Exception as e:  # a path that syncs the host cannot be captured
            t_graph = f"n/a ({type(e).__name__})"
    return t_eager, t_graph


def bench_ssd(impl, batch, seqlen, cfg, dstate):
    t = {k: v.requires_grad_() for k, v in ssd_inputs(batch, seqlen, cfg, dstate).items()}
    dy = torch.randn_like(t["x"])
    leaves = list(t.values())
    fwd = lambda: ssd_call(impl, t)  # noqa: E731
    fb = lambda: torch.autograd.grad(ssd_call(impl, t)[0], leaves, dy)  # noqa: E731
    graph = impl == "triton"
    return time_pair(fwd, graph=graph), time_pair(fb, grad_to_none=leaves, graph=graph)


def bench_sdpa(batch, seqlen, cfg):
    q, k, v = (torch.randn(batch, cfg.nheads, seqlen, cfg.headdim, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    dy = torch.randn_like(q)

    def fwd():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    fb = lambda: torch.autograd.grad(fwd(), (q, k, v), dy)  # noqa: E731
    return time_pair(fwd), time_pair(fb, grad_to_none=[q, k, v])




def bench_step(batch, state_dtype, copy_bw, nheads=64, headdim=64, dstate=128, prefetch=False, block_p=None):
    """Kernel time of one decode step inside a CUDA graph, stepping through enough states to miss L2.
    prefetch: state_prefetch=True, as the Mamba-2 layer calls it (each step reads its state before the PDL wait;
    in this graph the launch before writes another state); block_p: force the head-dim block."""
    state_bytes = batch * nheads * headdim * dstate * torch.tensor([], dtype=state_dtype).element_size()
    nbuf = max(2, min(200, (512 << 20) // state_bytes))
    states = [torch.randn(batch, nheads, headdim, dstate, device="cuda").to(state_dtype) for _ in range(nbuf)]
    g = torch.Generator(device="cuda").manual_seed(3)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    x, dt, B, C = rnd(batch, nheads, headdim), rnd(batch, nheads), rnd(batch, 1, dstate), rnd(batch, 1, dstate)
    A, D, bias = -torch.rand(nheads, device="cuda") - 0.5, rnd(nheads), rnd(nheads)
    kw = dict(D=D, dt_bias=bias, dt_softplus=True, state_prefetch=prefetch, block_p=block_p)
    expected = states[0].clone()
    y_ref = ssd_step_reference(expected, x, dt, A, B, C, D=D, dt_bias=bias, dt_softplus=True)
    y = ssd_step_triton(states[0], x, dt, A, B, C, **kw)
    err = max(rel_error(y, y_ref), rel_error(states[0].float(), expected.float()))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for s in states:
            ssd_step_triton(s, x, dt, A, B, C, **kw)
    graph.replay()
    ms = do_bench(graph.replay, warmup=10, rep=100, return_mode="median") / nbuf
    eager_ms = do_bench(lambda: ssd_step_triton(states[0], x, dt, A, B, C, **kw), return_mode="median")
    io_bytes = 2 * state_bytes + batch * (2 * nheads * headdim + nheads + 2 * dstate) * 4
    return dict(batch=batch, state=str(state_dtype)[6:], prefetch=prefetch, us=ms * 1e3, eager_us=eager_ms * 1e3,
                bw=io_bytes / (ms * 1e-3), frac=io_bytes / (ms * 1e-3) / copy_bw, err=err)


def step_sweep(copy_bw, log) -> list[str]:
    """The decode step at batch 1 (state prefetched) over head-dim blocks x warps: a markdown table of us a step;
    the default block (step_block_p) and STEP_WARPS are what ssd_step_triton takes untold."""
    from ssmkit.ops.ssd.triton import step

    default_warps, warp_counts = step.STEP_WARPS, (1, 2, 4, 8)
    rows = ["| state | block_p | " + " | ".join(f"{w} warps" for w in warp_counts) + " |",
            "|---|---|" + "---|" * len(warp_counts)]
    try:
        for dtype in (torch.float32, torch.bfloat16):
            for bp in (2, 4, 8, 16, 32):
                cells = []
                for warps in warp_counts:
                    step.STEP_WARPS = warps
                    r = bench_step(1, dtype, copy_bw, prefetch=True, block_p=bp)
                    log(json.dumps(dict(sweep=True, block_p=bp, warps=warps,
                                        **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})))
                    cells.append(f"{r['us']:.2f}" + ("" if r["err"] < 1e-3 else f" (err {r['err']:.0e})"))
                rows.append(f"| {str(dtype)[6:]} | {bp} | " + " | ".join(cells) + " |")
    finally:
        step.STEP_WARPS = default_warps
    return rows




def main():
    cfg = parse()
    log, errs, copy_bw = start_kernel_run(validate, cfg)
    lines, dev = log.lines, torch.cuda.get_device_name()
    rows = []
    for L in cfg.lengths:
        batch = cfg.total_tokens // L
        r = dict(L=L, batch=batch)
        (r["tri_f"], r["tri_f_g"]), (r["tri_fb"], r["tri_fb_g"]) = bench_ssd("triton", batch, L, cfg, cfg.dstate)
        if L <= cfg.skip_chunked_at:
            (r["chk_f"], _), (r["chk_fb"], _) = bench_ssd("chunked", batch, L, cfg, cfg.dstate)
        (r["att_f"], r["att_f_g"]), (r["att_fb"], r["att_fb_g"]) = bench_sdpa(batch, L, cfg)
        log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
        rows.append(r)
    sweep = []
    for N in cfg.dstates:
        (f, fg), (fb, fbg) = bench_ssd("triton", cfg.total_tokens // 4096, 4096, cfg, N)
        sweep.append(dict(dstate=N, f=f, f_g=fg, fb=fb, fb_g=fbg))
        log(json.dumps(sweep[-1], default=str))
    steps = [bench_step(b, sd, copy_bw, prefetch=pf) for sd in (torch.float32, torch.bfloat16) for b in cfg.batches
             for pf in (False, True)]
    for s in steps:
        log(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}))
    log("tuned configs: " + "; ".join(f"{name} P{key[2]} N{key[3]} nseg{key[1][3]} -> {c}"
                                      for (name, key), c in tuned_configs().items()))

    table = ["| L | batch | triton fwd | graph | chunked fwd | SDPA-flash fwd | triton fwd+bwd | graph | "
             "chunked fwd+bwd | SDPA-flash fwd+bwd |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['L']} | {r['batch']} | {fmt(r['tri_f'])} | {fmt(r['tri_f_g'])} | "
                     f"{fmt(r.get('chk_f'))} | {fmt(r['att_f'])} | {fmt(r['tri_fb'])} | {fmt(r['tri_fb_g'])} | "
                     f"{fmt(r.get('chk_fb'))} | {fmt(r['att_fb'])} |")
    table += ["", "| dstate (L=4096) | fwd | graph | fwd+bwd | graph |", "|---|---|---|---|---|"]
    table += [f"| {s['dstate']} | {fmt(s['f'])} | {fmt(s['f_g'])} | {fmt(s['fb'])} | {fmt(s['fb_g'])} |"
              for s in sweep]
    table += ["", f"| decode batch | state | state read before the PDL wait | us (graph) | us (eager) | GB/s | "
              f"of copy {copy_bw / 1e12:.2f} TB/s | max rel err |", "|---|---|---|---|---|---|---|---|"]
    table += [f"| {s['batch']} | {s['state']} | {'yes' if s['prefetch'] else 'no'} | {s['us']:.2f} | "
              f"{s['eager_us']:.1f} | {s['bw'] / 1e9:.0f} | {100 * s['frac']:.0f}% | {s['err']:.1e} |" for s in steps]
    if cfg.step_sweep:
        table += ["", "Decode step at batch 1, us a step in a CUDA graph, state prefetched, head-dim block x warps:",
                  "",
                  *step_sweep(copy_bw, log)]
    today = datetime.date.today().isoformat()
    md = [f"# SSD on GPU ({dev}, {today})", "", f"torch {torch.__version__}, triton {triton.__version__}, "
          f"python {platform.python_version()}; bf16, headdim {cfg.headdim}, nheads {cfg.nheads}, ngroups 1, "
          f"dstate {cfg.dstate} unless swept, {cfg.total_tokens} tokens per call; ms, do_bench median (L2 flushed) "
          "and CUDA-graph replay median.", "", f"Command: `python benchmarks/ssd_gpu.py {' '.join(sys.argv[1:])}`", "",
          "Validation (bf16, b=4, L=4096, rel. to the torch chunked path): "
          + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()), "", *table, "", "Log:", "", "```", *lines, "```"]
    Path(cfg.out).write_text("\n".join(md) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
