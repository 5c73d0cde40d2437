"""SSD forward and forward + backward time against the number of segments a sequence is cut into (the plan's
segment_count forced), at ssd_gpu.py's shapes and inputs (bf16, 32 heads, headdim 64, dstate 64, one group, D,
dt_bias and softplus, gradients of every input). ms, triton.testing.do_bench medians.

    python3 benchmarks/ssd_segments_gpu.py [--seqlen 16384 --batch 4 --segments 1,2,3,4,5,8]    # needs CUDA
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ssmkit.ops.ssd.triton.plan as plan  # noqa: E402
from benchmarks.ssd_gpu import BenchConfig, ssd_call, ssd_inputs  # noqa: E402


def main(seqlen: int, batch: int, counts: list[int]) -> None:
    cfg = BenchConfig()
    t = {k: v.requires_grad_() for k, v in ssd_inputs(batch, seqlen, cfg, cfg.dstate).items()}
    leaves = list(t.values())
    dy = torch.randn_like(t["x"])
    chosen = plan.segment_count
    nchunks = triton.cdiv(seqlen, plan.DEFAULT_CHUNK)
    print(f"device {torch.cuda.get_device_name()}; L={seqlen} batch={batch}; the plan picks "
          f"{chosen(nchunks, batch, cfg.nheads, plan.sm_count(dy.device))} segments")

    def forward():
        with torch.no_grad():
            return ssd_call("triton", t)

    def forward_backward():
        return torch.autograd.grad(ssd_call("triton", t)[0], leaves, dy)

    try:
        for n in counts:
            plan.segment_count = lambda *args, n=n, **kwargs: n
            forward_backward()  # tunes this key
            f = triton.testing.do_bench(forward, warmup=10, rep=100)
            fb = triton.testing.do_bench(forward_backward, warmup=5, rep=60)
            print(f"segments {n:3d}: forward {f:.3f} ms, forward + backward {fb:.3f} ms", flush=True)
    finally:
        plan.segment_count = chosen


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqlen", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--segments", default="1,2,3,4,5,8", help="comma-separated segment counts")
    cli = parser.parse_args()
    main(cli.seqlen, cli.batch, [int(n) for n in cli.segments.split(",")])
