"""SSD forward and forward + backward time against the number of segments a sequence is cut into (the plan's
segment_count forced), at the benchmark's shapes: bf16, 32 heads, headdim 64, dstate 64, one group, D, dt_bias and
softplus, gradients of every input. ms, triton.testing.do_bench medians.

    python3 benchmarks/ssd_segments_gpu.py [--seqlen 16384 --batch 4]    # needs a CUDA device
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ssmkit.ops.ssd.triton.plan as plan  # noqa: E402
from ssmkit.ops.ssd.triton import ssd_triton  # noqa: E402


def main(seqlen: int, batch: int, counts: list[int]) -> None:
    torch.manual_seed(0)
    heads, headdim, dstate, dev = 32, 64, 64, "cuda"
    x = torch.randn(batch, seqlen, heads, headdim, device=dev, dtype=torch.bfloat16)
    dt = (torch.rand(batch, seqlen, heads, device=dev) * 0.1).to(torch.bfloat16)
    A = -torch.rand(heads, device=dev) * 4 - 0.5
    B = torch.randn(batch, seqlen, 1, dstate, device=dev, dtype=torch.bfloat16)
    C = torch.randn_like(B)
    D, bias = torch.randn(heads, device=dev), torch.randn(heads, device=dev)
    inputs = [t.requires_grad_() for t in (x, dt, A, B, C, D, bias)]
    dy = torch.randn_like(x)
    chosen = plan.segment_count
    nchunks = triton.cdiv(seqlen, plan.DEFAULT_CHUNK)
    sms = plan.sm_count(x.device)
    print(f"device {torch.cuda.get_device_name()}; L={seqlen} batch={batch}; the plan picks "
          f"{chosen(nchunks, batch, heads, sms)} segments")

    def forward():
        with torch.no_grad():
            return ssd_triton(x, dt, A, B, C, D=D, dt_bias=bias, dt_softplus=True)

    def forward_backward():
        for t in inputs:
            t.grad = None
        y, _ = ssd_triton(x, dt, A, B, C, D=D, dt_bias=bias, dt_softplus=True)
        y.backward(dy)

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
