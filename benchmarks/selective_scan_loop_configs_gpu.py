"""Every LOOP config the selective scan forward's tuner may pick (plan.configs), forced one at a time and timed
(do_bench median, L2 flushed) at batch 16 x L 1024 and batch 1 x L 16384, dim 2048, dstate 16, bf16, with the
default segments; each y checked against the float32 parallel torch scan. Puts the prefetching walk (PREFETCH 1,
2: fwd.py v5) beside the walk without it at the same block shapes and register caps.

    python benchmarks/selective_scan_loop_configs_gpu.py [--shapes 16x1024 1x16384]
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
from ssmkit.ops.selective_scan.triton.fwd import selective_scan_fwd  # noqa: E402
from ssmkit.ops.selective_scan.triton.plan import configs  # noqa: E402


def label(cfg: dict) -> str:
    return (f"t{cfg['BLOCK_T']} d{cfg['BLOCK_D']} w{cfg['num_warps']} cap {cfg.get('maxnreg')} "
            f"prefetch {cfg.get('PREFETCH', 0)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="*", default=["16x1024", "1x16384"], help="BATCHxSEQLEN at dim 2048")
    a = p.parse_args()
    print(f"device {torch.cuda.get_device_name()}", flush=True)
    loops = [c for c in configs("fwd", 16, 2048, loop=True) if c.get("LOOP")]
    for shape in a.shapes:
        batch, seqlen = (int(v) for v in shape.split("x"))
        t = inputs(batch, seqlen, 2048, 16)
        args = [t[k] for k in NAMES]
        y_ref = selective_scan_parallel(*[t[k].float() for k in NAMES], dt_softplus=True)
        rows = []
        for cfg in loops:
            y = selective_scan_fwd(*args, dt_softplus=True, config=cfg)[0]
            err = rel_error(y, y_ref)
            ms = do_bench(lambda: selective_scan_fwd(*args, dt_softplus=True, config=cfg), warmup=10, rep=50,
                          return_mode="median")
            rows.append((ms, cfg))
            print(f"b{batch} L{seqlen} {label(cfg)}: {ms:.3f} ms err {err:.1e}", flush=True)
        print(f"\nfastest at b{batch} L{seqlen}:")
        for ms, cfg in sorted(rows, key=lambda r: r[0])[:5]:
            print(f"  {ms:.3f} ms  {label(cfg)}")


if __name__ == "__main__":
    main()
