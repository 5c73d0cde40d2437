"""Register caps (maxnreg) of the selective scan forward's LOOP configs on one GPU: each block shape at no cap and
at 128, 96, 80 and 64 registers a thread, timed (do_bench median) at batch 16 x L 1024 and batch 1 x L 16384,
dim 2048, dstate 16, with the default segments; each output checked against the uncapped (4, 64, 1) config.
This is what plan.LOOP_CAPPED is chosen from: a cap trades spills for resident warps.

    python benchmarks/selective_scan_regcap_gpu.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.selective_scan_configs_gpu import NAMES, inputs  # noqa: E402
from ssmkit.ops.selective_scan.triton.fwd import selective_scan_fwd  # noqa: E402

SHAPES = ((16, 1024), (1, 16384))
BLOCKS = ((4, 64, 1), (8, 64, 1), (4, 128, 1), (4, 32, 1), (2, 64, 1))
CAPS = (None, 128, 96, 80, 64)


def main() -> None:
    print(f"device {torch.cuda.get_device_name()}", flush=True)
    for batch, seqlen in SHAPES:
        t = inputs(batch, seqlen, 2048, 16)
        args = [t[k] for k in NAMES]
        ref = selective_scan_fwd(*args, dt_softplus=True, config=dict(BLOCK_T=4, BLOCK_D=64, num_warps=1, LOOP=True))[0]
        for bt, bd, w in BLOCKS:
            for cap in CAPS:
                cfg = dict(BLOCK_T=bt, BLOCK_D=bd, num_warps=w, LOOP=True, maxnreg=cap)
                y = selective_scan_fwd(*args, dt_softplus=True, config=cfg)[0]
                ok = torch.allclose(y.float(), ref.float(), rtol=1e-2, atol=1e-2)
                ms = do_bench(lambda: selective_scan_fwd(*args, dt_softplus=True, config=cfg), warmup=5, rep=25,
                              return_mode="median")
                print(f"b{batch} L{seqlen} t{bt} d{bd} w{w} cap {cap}: {ms:.3f} ms ok={ok}", flush=True)


if __name__ == "__main__":
    main()
