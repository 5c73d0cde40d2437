"""Block-config sweep of the Triton selective scan kernels on one GPU: every (BLOCK_T, BLOCK_D, num_warps) of a
grid, checked against the float32 parallel torch scan and timed (do_bench median), forward and backward apart.

The forward's tile variant keeps a (BLOCK_T, BLOCK_D, dstate) tile of states in registers, its LOOP variant a
(BLOCK_D, dstate) state (rows walked one by one; its configs come first); the sweep shows how many elements per
thread fit before the compiler spills, which is what the config tables of ssmkit/ops/selective_scan/triton/plan.py
are chosen from. Prints the fastest configs of each kernel last.

    python benchmarks/selective_scan_configs_gpu.py [--batch 16 --seqlen 1024 --dim 2048 --dstate 16] [--top 8]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ssmkit.bench.kernel_timing import copy_bandwidth, rel_error  # noqa: E402
from ssmkit.ops.selective_scan import selective_scan_parallel  # noqa: E402
from ssmkit.ops.selective_scan.triton.bwd import selective_scan_bwd  # noqa: E402
from ssmkit.ops.selective_scan.triton.fwd import selective_scan_fwd  # noqa: E402
from ssmkit.ops.selective_scan.triton.plan import CHECKPOINT_ROWS  # noqa: E402

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")
GRID_T, GRID_D, GRID_W = (4, 8, 16, 32), (8, 16, 32, 64, 128), (1, 2, 4, 8)


def inputs(batch, seqlen, dim, dstate, seed=0):
    """Mamba-1 ranges (as benchmarks/mamba1_gpu.py): bf16 activations, float32 A, D, dt_bias."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    dt0 = torch.exp(torch.rand(dim, device="cuda", generator=g) * 4.6 - 6.9)
    bf = torch.bfloat16
    return dict(x=rnd(batch, seqlen, dim).to(bf), dt=(0.5 * rnd(batch, seqlen, dim)).to(bf),
                A=-torch.arange(1, dstate + 1, device="cuda", dtype=torch.float32).repeat(dim, 1).contiguous(),
                B=rnd(batch, seqlen, 1, dstate).to(bf), C=rnd(batch, seqlen, 1, dstate).to(bf),
                D=torch.ones(dim, device="cuda"), z=rnd(batch, seqlen, dim).to(bf),
                dt_bias=dt0 + torch.log(-torch.expm1(-dt0)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=1024)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--segment-rows", type=int, nargs="*", default=[0],
                   help="segment lengths to time the LOOP forward at (0: the default, plan.segment_length)")
    p.add_argument("--loop-only", action="store_true", help="time only the forward's LOOP variant")
    a = p.parse_args()
    t = inputs(a.batch, a.seqlen, a.dim, a.dstate)
    args = [t[k] for k in NAMES]
    dy = torch.randn_like(t["x"])
    leaves = {k: v.float().requires_grad_() for k, v in t.items()}
    y_ref, final_ref = selective_scan_parallel(*[leaves[k] for k in NAMES], dt_softplus=True, return_final_state=True)
    grads_ref = torch.autograd.grad(y_ref, [leaves[k] for k in NAMES], dy.float())
    copy = copy_bandwidth()
    act = a.batch * a.seqlen * a.dim * 2
    fwd_bytes = 4 * act + 2 * a.batch * a.seqlen * a.dstate * 2
    print(f"device {torch.cuda.get_device_name()}; copy {copy / 1e12:.2f} TB/s; shape b{a.batch} L{a.seqlen} "
          f"d{a.dim} n{a.dstate}; forward must move {fwd_bytes / 1e6:.0f} MB", flush=True)
    rows = {"fwd": [], "bwd": []}
    _, _, ckpt = selective_scan_fwd(*args, dt_softplus=True, checkpoint=True,
                                    config=dict(BLOCK_T=16, BLOCK_D=32, num_warps=4))
    # LOOP (v3): 1, 2 or 4 whole channels per thread
    grid = [(True, bt, 32 * w * cpt, w) for bt in (4, 8) for w in GRID_W for cpt in (1, 2, 4)]
    if not a.loop_only:
        grid += [(False, bt, bd, w) for bt, bd, w in itertools.product(GRID_T, GRID_D, GRID_W)]
    for loop, bt, bd, w in grid:
        cfg = dict(BLOCK_T=bt, BLOCK_D=bd, num_warps=w, LOOP=loop)
        tile = bd * max(16, a.dstate) * (1 if loop else bt)  # state elements a program holds in registers
        if tile > 64 * 32 * w * (4 if loop else 2) or bd > a.dim or CHECKPOINT_ROWS % bt:
            continue  # over 64 state elements per thread: certain to spill
        try:
            if loop:
                for seg in a.segment_rows:
                    kw = dict(dt_softplus=True, config=cfg, segment_rows=seg or None)
                    y, final, _ = selective_scan_fwd(*args, **kw)
                    err = max(rel_error(y, y_ref), rel_error(final, final_ref))
                    ms = do_bench(lambda: selective_scan_fwd(*args, **kw), warmup=5, rep=25, return_mode="median")
                    rows["fwd"].append((ms, dict(cfg, segment_rows=seg), err))
                    print(f"loop {bt:3d} {bd:4d} {w} seg {seg or 'auto'}: fwd {ms:.3f} ms err {err:.1e} "
                          f"{fwd_bytes / (ms * 1e-3) / copy:.0%} of copy", flush=True)
                continue
            y, final, _ = selective_scan_fwd(*args, dt_softplus=True, config=cfg)
            err = max(rel_error(y, y_ref), rel_error(final, final_ref))
            ms = do_bench(lambda: selective_scan_fwd(*args, dt_softplus=True, config=cfg), warmup=5, rep=25,
                          return_mode="median")
            rows["fwd"].append((ms, cfg, err))
            grads = selective_scan_bwd(dy, None, *args, True, None, ckpt, config=cfg)
            gerr = max(rel_error(g, r) for g, r in zip(grads, grads_ref) if g is not None)
            ms_b = do_bench(lambda: selective_scan_bwd(dy, None, *args, True, None, ckpt, config=cfg), warmup=5,
                            rep=25, return_mode="median")
            rows["bwd"].append((ms_b, cfg, gerr))
            print(f"tile {bt:3d} {bd:4d} {w}: fwd {ms:.3f} ms err {err:.1e} | bwd {ms_b:.3f} ms err "
                  f"{gerr:.1e}", flush=True)
        except Exception as e:  # noqa: BLE001 - a config the compiler rejects is reported, not fatal
            kind = "loop" if loop else "tile"
            print(f"{kind} {bt:3d} {bd:4d} {w}: failed {type(e).__name__}: {str(e)[:120]}", flush=True)
    for kind in ("fwd", "bwd"):
        print(f"\nfastest {kind} (ms, config, max rel err vs float32 parallel; fwd % of copy ceiling)")
        for ms, cfg, err in sorted(rows[kind], key=lambda r: r[0])[:a.top]:
            frac = f" {fwd_bytes / (ms * 1e-3) / copy:.0%}" if kind == "fwd" else ""
            print(f"  {ms:.3f} {cfg} {err:.1e}{frac}")


if __name__ == "__main__":
    main()
