"""Selective scan backward configs on one GPU: the tile backward (bwd.py) and the row-walking one (bwd_rows.py),
each config checked against the float64 parallel scan's gradients and timed (do_bench median), at batch 16 x L 1024
and batch 1 x L 16384, dim 2048, dstate 16, bf16, z, D and dt bias on. Prints the fastest of each kind last.

    python benchmarks/selective_scan_bwd_gpu.py [--shapes 16x1024 1x16384]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.selective_scan_configs_gpu import NAMES, inputs  # noqa: E402
from ssmkit.bench.kernel_timing import rel_error  # noqa: E402
from ssmkit.ops.selective_scan import selective_scan_parallel  # noqa: E402
from ssmkit.ops.selective_scan.triton.bwd import selective_scan_bwd  # noqa: E402
from ssmkit.ops.selective_scan.triton.fwd import selective_scan_fwd  # noqa: E402
from ssmkit.ops.selective_scan.triton.plan import configs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["16x1024", "1x16384"])
    a = p.parse_args()
    print(f"device {torch.cuda.get_device_name()}", flush=True)
    best = {}
    for shape in a.shapes:
        batch, seqlen = (int(v) for v in shape.split("x"))
        t = inputs(batch, seqlen, 2048, 16)
        args = [t[k] for k in NAMES]
        dy = torch.randn_like(t["x"])
        leaves = {k: v.float().requires_grad_() for k, v in t.items()}
        y_ref = selective_scan_parallel(*[leaves[k] for k in NAMES], dt_softplus=True)
        grads_ref = torch.autograd.grad(y_ref, [leaves[k] for k in NAMES], dy.float())
        _, _, ckpt = selective_scan_fwd(*args, dt_softplus=True, checkpoint=True)
        for cfg in configs("bwd", 16, 2048, loop=True):
            kind = "rows" if cfg.get("LOOP") else "tile"
            try:
                grads = selective_scan_bwd(dy, None, *args, True, None, ckpt, config=cfg)
                err = max(rel_error(g, r) for g, r in zip(grads, grads_ref) if g is not None)
                ms = do_bench(lambda: selective_scan_bwd(dy, None, *args, True, None, ckpt, config=cfg), warmup=3,
                              rep=20, return_mode="median")
            except Exception as e:  # noqa: BLE001 - a config the compiler rejects is reported, not fatal
                print(f"{shape} {kind} {cfg}: failed {type(e).__name__}: {str(e)[:120]}", flush=True)
                continue
            print(f"{shape} {kind} {cfg}: {ms:.3f} ms, max rel err {err:.1e}", flush=True)
            if (shape, kind) not in best or ms < best[(shape, kind)][0]:
                best[(shape, kind)] = (ms, cfg, err)
    print("\nfastest (ms, config, max rel err of any gradient vs the float32 parallel scan)")
    for (shape, kind), (ms, cfg, err) in sorted(best.items()):
        print(f"  {shape} {kind}: {ms:.3f} {cfg} {err:.1e}")


if __name__ == "__main__":
    main()
