"""CPU benchmark of the operator spec: SSD reference vs quadratic vs chunked, and the selective scan's
reference vs parallel form, for seqlen 256..8192; writes benchmarks/results/ops-cpu-<date>.md.

    python benchmarks/ops_cpu.py [--seqlens 256 1024 ...] [--out benchmarks/results]
"""

import argparse
import os
import datetime
import pathlib

import torch

from ssmkit.bench.environment import markdown_header
from ssmkit.bench.ops import bench_selective_scan, bench_ssd, markdown_table


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seqlens", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = bench_ssd(args.seqlens, repeats=args.repeats) + bench_selective_scan(args.seqlens, repeats=args.repeats)
    table = markdown_table(rows)
    print(table)
    text = markdown_header("Operators on CPU: evaluation orders side by side") + f"""
Shapes: SSD batch 1, nheads 4, headdim 32, ngroups 1, dstate 16, chunk_size 64, float32, no_grad.
Selective scan batch 1, dim 64, dstate 16, ngroups 1, float32. Time is the best of {args.repeats} runs after one warm-up;
peak memory counts the tensors created by the call (ssmkit.bench.tensor_memory), inputs excluded.
torch threads: {torch.get_num_threads()}. 1-minute load average before / after the run: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work shared the machine: read small times as rough; the quadratic-vs-chunked growth is the point).

{table}
"""
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ops-cpu-{datetime.date.today().isoformat()}.md"
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
