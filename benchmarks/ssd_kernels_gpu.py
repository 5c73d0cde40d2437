"""Where one SSD forward + backward spends its GPU time: the kernels of `ssd_triton` and the torch ops around
them (torch.profiler), per launch, at the benchmark's shapes (bf16, 65,536 tokens, 32 heads, headdim 64,
dstate 64, D and dt_bias, gradients of every input) for L = 1K, 4K and 16K.

    python3 benchmarks/ssd_kernels_gpu.py    # needs a CUDA device
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.ssd_gpu import BenchConfig, ssd_call, ssd_inputs  # noqa: E402
from ssmkit.bench.kernel_timing import kernel_times  # noqa: E402
from ssmkit.ops.ssd.triton.plan import tuned_configs  # noqa: E402

CALLS = 3


def main() -> None:
    cfg = BenchConfig()
    print(f"device {torch.cuda.get_device_name()}; torch {torch.__version__}")
    for seqlen in (1024, 4096, 16384):
        batch = cfg.total_tokens // seqlen
        t = {k: v.requires_grad_() for k, v in ssd_inputs(batch, seqlen, cfg, cfg.dstate).items()}
        dy = torch.randn_like(t["x"])
        leaves = list(t.values())

        def fwd_bwd():
            y = ssd_call("triton", t)
            torch.autograd.grad(y[0] if isinstance(y, tuple) else y, leaves, dy)

        for _ in range(4):  # tuning, compiles
            fwd_bwd()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(CALLS):
                fwd_bwd()
            torch.cuda.synchronize()
        kernels = kernel_times(prof, CALLS, width=80)
        total = sum(us for _, us in kernels.values())
        print(f"== L={seqlen} b={batch}: {total / 1e3:.3f} ms kernel time per forward + backward")
        for name, (n, us) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:14]:
            print(f"   {n:4.1f} x {us / n:8.1f} us = {us:8.1f}  {name}")
    for (name, key), config in tuned_configs().items():
        print(f"tuned {name} {key[1:]}: {config}")


if __name__ == "__main__":
    main()
