"""Where a CUDA-graph decode step spends its time, per preset at batch 1 (bf16, random weights, 1K-token prompt):
the replay's GPU time per step, the time per step of generate_steps' loop and of generate (greedy, no stop tokens:
the in-graph greedy loop, no launch outside the replay), and the kernels one replay launches (counts and mean
durations from torch.profiler, which sees the kernels inside a graph replay). With --prefill, the same for
one prefill of the prompt (eager: wall time against GPU time tells launch-bound from GPU-bound) and, where the
model takes prefill from CUDA graphs, that prefill's timeline: host time before the first kernel, kernel time,
gaps between kernels and the largest gaps.

    python3 benchmarks/decode_profile.py mamba2-130m,mamba-130m,llama-125m [--prefill] [--no-pdl]
        [--no-one-row-fusions] [--no-conv-epilogue]    # needs a CUDA device
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ssmkit.bench.kernel_timing import kernel_times, replay_ms
from ssmkit.bench.scripts import random_model
from ssmkit.inference import allocate_cache, generate, generate_steps
from ssmkit.inference.generate import prefill
from ssmkit.inference.graph_registry import graphed_decoder, release_decoder
from ssmkit.inference.prefill_graphs import graph_prefill_reason

PROMPT, CACHE, REPLAYS, PROFILED = 1024, 2048, 200, 5


def replay_us(graph) -> float:
    """GPU time of one replay (us), averaged over REPLAYS back-to-back replays between two CUDA events."""
    return replay_ms(graph, REPLAYS, warmup=20) * 1e3


def kernels_of(graph) -> dict:
    """{kernel name: [launches per replay, total us per replay]} over PROFILED replays."""
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(PROFILED):
            graph.replay()
        torch.cuda.synchronize()
    return kernel_times(prof, PROFILED)


def loop_us(model, ids, new: int = 64) -> float:
    """generate_steps' time per decode step (us), the host running ahead of the device."""
    steps = generate_steps(model, ids, max_new_tokens=new + 1, eos_token_id=[], cuda_graph=True,
                           max_cache_len=CACHE)
    next(steps)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in steps:
        pass
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / new * 1e6


def generate_us(model, ids, new: int = 512) -> float:
    """generate's time per decode step (us): a call for new + 1 tokens less a call for 1 (the prefill and the
    first token), each the fastest of 5 timed calls, taken in turns, after an untimed pair (the prefill's
    jitter, spread over `new` steps, stays under a microsecond a step). First checks that its tokens are
    generate_steps' (the same greedy graph; generate takes the decoder's token history instead of copies)."""
    kwargs = dict(eos_token_id=[], cuda_graph=True, max_cache_len=CACHE)  # one decoder of CACHE positions
    steps = generate_steps(model, ids, max_new_tokens=new + 1, **kwargs)
    expected = torch.stack([s.tokens for s in steps], dim=1)
    got = generate(model, ids, max_new_tokens=new + 1, **kwargs)[:, ids.shape[1]:]
    assert torch.equal(got, expected), "generate's tokens differ from generate_steps'"
    times = {1: [], new + 1: []}
    for _ in range(6):
        for n, runs in times.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            generate(model, ids, max_new_tokens=n, **kwargs)
            torch.cuda.synchronize()
            runs.append(time.perf_counter() - t0)
    return (min(times[new + 1][1:]) - min(times[1][1:])) / new * 1e6


def kernel_table(kernels: dict, top: int = 22) -> None:
    for name, (n, us) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"   {n:5.0f} x {us / n:6.2f} us = {us:7.1f} us  {name}")


def prefill_wall_ms(model, ids, cuda_graph) -> float:
    """Median wall time (ms) of 5 prefills from a fresh state, after 3 untimed ones (capture, tuning)."""
    times = []
    for i in range(8):
        state = allocate_cache(model, ids.shape[0], CACHE)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        prefill(model, ids, state, cuda_graph=cuda_graph)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times[3:])[2]


@torch.no_grad()
def profile_prefill(model, ids) -> None:
    """Wall time of one eager prefill (host launching, then a sync) against its GPU time and its kernels; then
    the wall time of prefill from CUDA graphs (ssmkit.inference.prefill_graphs) where the model takes it."""
    model.eval()
    reason = graph_prefill_reason(model, ids, None, None)
    print(f"   prefill {ids.shape[1]} tokens, wall (median of 5): eager {prefill_wall_ms(model, ids, False):.1f} ms, "
          + (f"graphs {prefill_wall_ms(model, ids, None):.1f} ms" if reason is None else f"no graphs ({reason})"))
    for _ in range(3):
        prefill(model, ids, allocate_cache(model, 1, CACHE), cuda_graph=False)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    state = allocate_cache(model, 1, CACHE)
    t0 = time.perf_counter()
    start.record()
    prefill(model, ids, state, cuda_graph=False)
    host = (time.perf_counter() - t0) * 1e3
    end.record()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) * 1e3
    state = allocate_cache(model, 1, CACHE)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        prefill(model, ids, state, cuda_graph=False)
        torch.cuda.synchronize()
    kernels = kernel_times(prof)
    print(f"   eager prefill: wall {wall:.1f} ms (host launching {host:.1f} ms), GPU "
          f"{start.elapsed_time(end):.1f} ms, {sum(v[0] for v in kernels.values()):.0f} kernels, "
          f"{sum(v[1] for v in kernels.values()) / 1e3:.1f} ms of kernel time")
    kernel_table(kernels, top=12)
    host = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)
    print("   host, torch.profiler: self CPU time by op (us per prefill, calls)")
    for e in host[:12]:
        print(f"      {e.self_cpu_time_total:9.0f} us  {e.count:5d} x  {e.key[:90]}")
    prof_py = cProfile.Profile()
    state = allocate_cache(model, 1, CACHE)
    prof_py.enable()
    prefill(model, ids, state, cuda_graph=False)
    torch.cuda.synchronize()
    prof_py.disable()
    text = io.StringIO()
    pstats.Stats(prof_py, stream=text).sort_stats("tottime").print_stats(22)
    print("   host, cProfile (Python functions by own time; cProfile slows the host):")
    for line in text.getvalue().splitlines():
        if line.strip() and (line.lstrip()[0].isdigit() or "ncalls" in line):
            print("      " + line[:150])


@torch.no_grad()
def profile_graphed_prefill(model, ids) -> None:
    """Where the wall time of one prefill from CUDA graphs goes: host time before the first kernel starts, the
    span from the first kernel's start to the last one's end, the kernel time inside that span (the rest are
    gaps between kernels inside the replays) and the time after the last kernel until the host sees it."""
    for _ in range(3):
        prefill(model, ids, allocate_cache(model, 1, CACHE), cuda_graph=None)
    state = allocate_cache(model, 1, CACHE)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        prefill(model, ids, state, cuda_graph=None)
        torch.cuda.synchronize()
    gpu = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                 if e.device_type == torch.autograd.DeviceType.CUDA)
    cpu = [e.time_range for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    if not gpu or not cpu:
        print("   graphed prefill: the profiler saw no kernels")
        return
    t0, t1 = min(r.start for r in cpu), max(r.end for r in cpu)
    busy = sum(end - start for start, end, _ in gpu)
    span = gpu[-1][1] - gpu[0][0]
    gaps = sorted(((b[0] - a[1], a[2], b[2]) for a, b in zip(gpu, gpu[1:])), reverse=True)
    print(f"   graphed prefill (profiled, us): host before the first kernel {gpu[0][0] - t0:.0f}; kernels "
          f"{len(gpu)} from first start to last end {span:.0f}, busy {busy:.0f}, gaps {span - busy:.0f}; "
          f"after the last kernel {t1 - gpu[-1][1]:.0f}")
    for gap, before, after in gaps[:6]:
        print(f"      gap {gap:7.1f} us  after {before[:50]}  before {after[:50]}")


def main(presets: list[str], with_prefill: bool = False) -> None:
    device = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name()}; torch {torch.__version__}")
    for preset in presets:
        model = random_model(preset, device, torch.bfloat16)
        ids = torch.randint(0, 1000, (1, PROMPT), device=device)
        list(generate_steps(model, ids, max_new_tokens=8, eos_token_id=[], cuda_graph=True))  # compile, capture
        decoder = graphed_decoder(model, 1, CACHE)
        decoder.reset()
        decoder.start(PROMPT)
        gpu = replay_us(decoder._graph)
        kernels = kernels_of(decoder._graph)
        release_decoder(model, decoder)
        loop = loop_us(model, ids)
        whole = generate_us(model, ids)
        count = sum(v[0] for v in kernels.values())
        total = sum(v[1] for v in kernels.values())
        print(f"\n== {preset}: {model.config.n_layers} layers; replay {gpu:.0f} us/step; generate_steps loop "
              f"{loop:.0f} us/step; generate {whole:.0f} us/step ({1e6 / whole:.0f} tokens/s); {count:.0f} kernels "
              f"per step, {total:.0f} us of kernel time")
        kernel_table(kernels)
        if with_prefill:
            profile_prefill(model, ids)
            if graph_prefill_reason(model, ids, None, None) is None:
                profile_graphed_prefill(model, ids)
        del model, decoder
        torch.cuda.empty_cache()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("presets", help="comma-separated ModelConfig presets, e.g. mamba2-130m,llama-125m")
    parser.add_argument("--prefill", action="store_true", help="also profile one prefill of the prompt")
    parser.add_argument("--prompt", type=int, default=PROMPT, help=f"prompt tokens (default {PROMPT})")
    parser.add_argument("--unfused", action="store_true",
                        help="hold impl='auto' off the fused norm + linear and RoPE + KV-write kernels, to time "
                             "them against a run without this flag")
    parser.add_argument("--no-pdl", action="store_true",
                        help="launch the decode kernels without programmatic dependent launch (ssmkit.ops.pdl)")
    parser.add_argument("--no-one-row-fusions", action="store_true",
                        help="clear ssmkit.models.block.ONE_ROW_FUSIONS (the norm + q/k/v and norm + gate/up GEMVs, "
                             "silu(gate) * up inside down, the final norm inside the LM head)")
    parser.add_argument("--no-conv-epilogue", action="store_true",
                        help="run the short conv's decode step as its own launch, not in in_proj's GEMV "
                             "(ssmkit.ops.norm.CONV_EPILOGUE_AUTO = False)")
    cli = parser.parse_args()
    if cli.no_one_row_fusions:
        import ssmkit.models.block

        ssmkit.models.block.ONE_ROW_FUSIONS = False
    if cli.no_conv_epilogue:
        import ssmkit.ops.norm

        ssmkit.ops.norm.CONV_EPILOGUE_AUTO = False
    if cli.no_pdl:
        import ssmkit.ops.pdl

        ssmkit.ops.pdl.PDL_AUTO = False
    if cli.unfused:
        import ssmkit.ops.attention
        import ssmkit.ops.norm

        ssmkit.ops.norm.NORM_LINEAR_AUTO = False
        ssmkit.ops.attention.ROPE_KERNEL_AUTO = False
    PROMPT, CACHE = cli.prompt, max(CACHE, cli.prompt + 1024)
    main(cli.presets.split(","), cli.prefill)
