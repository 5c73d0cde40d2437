"""Host-side launch planning for the SSD Triton kernels: chunk size, segments, block configs and tuning.

Each program walks the chunks of one segment of one sequence, so the grid is (segments x head-dim blocks x
heads); long sequences are cut into segments until the GPU has enough programs (Dao & Gu 2024, section 6:
the inter-chunk scan is short, so each segment redoes its part of it instead of a separate launch).

Version history
- v1: one plan per call; a small table of configs per kernel, tuned once per shape key by timing each
  config with triton.testing.do_bench (never while a CUDA graph is being captured, never in the interpreter).
- v2: the tuning key holds powers of two of the plan's sizes (tuning_shape), not the exact plan, so a stream of
  prompts of different lengths tunes once per bucket.
- v3: small calls (under TUNE_MIN_WORK elements) take the first config untimed; tuning_stats() counts the keys
  tuned and their seconds. The kernels no longer specialize on lengths (one compile per config, not per length
  class): on an H100, served Mamba-2 had p99 latencies of 34-43 s (benchmarks/results/serve-load-h100-*), and
  the replayed workload TTFT p95 of 3-9 s against p50 of 50-1450 ms (bench-gpu-workload-h100-*).
- v4: tuning can be frozen (tuning_frozen(), freeze_tuning()): a key not tuned yet then takes its first config
  untimed. Tuning a key cost about 4 s on an H100 (16 keys, 62.8 s in one replayed workload), so a server or a
  benchmark tunes during its warm-up and freezes after it rather than stalling a request on a new shape bucket.
- v5: segments only when the sequences give fewer programs than SMs
  (segment_count); the old target of 6 programs an SM cut L = 4K..16K into 2..7 segments, and each segment's
  pre-pass and shorter walk cost more than the parallelism won (forward 0.517 -> 0.400 ms at L = 4K on an H100).
- v6: below one program an SM, the most segments whose programs still fit PROGRAMS_PER_SM an SM (rounding
  down), not the fewest that reach it (rounding up): at L = 16K, batch 4, 32 heads that is 4 segments, not 5, and
  forward + backward went 3.059 -> 2.742 ms (forward 0.618 -> 0.576) on an H100; a fifth segment puts 640
  programs on 528 places, a second round for 112 of them.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ssmkit.ops.dispatch import cuda_sm_count, interpreting

# Sequences are cut into segments only when they give fewer programs than the GPU has SMs, and then into as many
# as fit PROGRAMS_PER_SM programs an SM. On an H100 (65,536 tokens, 32 heads, headdim 64, dstate 64) one segment
# a sequence was fastest up to L = 8K (256 programs: forward 0.395 ms against 0.576 with 2 segments), and at
# L = 16K (128 programs) 4 segments were (forward 0.570-0.576 ms; 1: 0.723, 2: 0.651, 3: 0.705, 5: 0.618,
# 8: 0.598, 9: 0.606; forward + backward 2.742 ms at 4 against 3.341 at 3, 3.059 at 5, 2.926 at 9):
# benchmarks/results/ssd-fwd-v4-bwd-v6-segments-h100-2026-12-07.md, ssd-gpu-h100-2026-12-07.md.
PROGRAMS_PER_SM = 4
CHUNK_SIZES = (16, 32, 64, 128)
# Rows of dstate the forward kernel takes at a time (its B, C blocks are (Q, FWD_SUB_N)): at 32 the sm_90 compile
# spilled more than at 64, and 128 spilled more at dstate 128 and 256.
FWD_SUB_N = 64
DEFAULT_CHUNK = 64


@dataclass(frozen=True)
class Plan:
    """Q: chunk length; nseq: sequences (batch rows or packed); seqlen: row length (batch mode);
    nseg, seg_chunks: segments per sequence and chunks per segment; maxlen: the longest sequence."""

    Q: int
    nseq: int
    seqlen: int
    maxlen: int
    nseg: int
    seg_chunks: int


def sm_count(device: torch.device) -> int:
    """The device's SM count; 4 on the interpreter, so the CPU tests cut sequences into segments too."""
    if device.type != "cuda":
        return 4
    return cuda_sm_count(device)


def make_plan(x, nheads, cu_seqlens, chunk_size, seg_chunks=None) -> Plan:
    """x (batch, seqlen, ...); chunk_size is honoured when it is a power of two in CHUNK_SIZES, else 64
    (the chunk length is an evaluation order: every choice computes the same function)."""
    batch, seqlen = x.shape[0], x.shape[1]
    Q = chunk_size if chunk_size in CHUNK_SIZES else DEFAULT_CHUNK
    if cu_seqlens is None:
        nseq, maxlen = batch, seqlen
    else:
        nseq = cu_seqlens.numel() - 1
        maxlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if nseq > 0 else 0
    nchunks = max(1, triton_cdiv(maxlen, Q))
    if seg_chunks is None:
        seg_chunks = triton_cdiv(nchunks, segment_count(nchunks, nseq, nheads, sm_count(x.device)))
    seg_chunks = max(1, min(seg_chunks, nchunks))
    return Plan(Q, nseq, seqlen, maxlen, triton_cdiv(nchunks, seg_chunks), seg_chunks)


def segment_count(nchunks: int, nseq: int, nheads: int, sms: int, programs_per_sm: int = PROGRAMS_PER_SM) -> int:
    """Segments to cut each sequence of nchunks chunks into: one while the nseq x nheads programs are at least
    one an SM, else the most that keep nseq x nheads x segments <= programs_per_sm x sms programs (head-dim
    blocks not counted), at least one, at most one a chunk. make_plan's policy, a pure function so that the plans
    of other devices and settings can be tabulated without one (benchmarks/kernel_resources_cpu.py --ssd-plan)."""
    programs = max(1, nseq * nheads)
    if programs >= sms:
        return 1
    return min(nchunks, max(1, programs_per_sm * sms // programs))


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def tuning_shape(plan: Plan) -> tuple:
    """The part of a plan the tuner keys on: chunk length and powers of two of the sequences, the longest
    sequence and the segments. Block configs only trade speed (every config computes the same result), and a
    server sees a new prompt length on nearly every request: keyed on exact lengths it would time every config
    again each time (seconds of stall per request, measured on an H100 in benchmarks/serve_load.py)."""
    return plan.Q, next_pow2(plan.nseq), next_pow2(max(1, plan.maxlen)), next_pow2(plan.nseg)


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def block_n(dstate: int) -> int:
    return max(16, next_pow2(dstate))


def configs(headdim: int, dstate: int, kind: str) -> list[dict]:
    """Every config the tuner may pick for one kernel kind ("fwd", "bwd"), deduplicated for this shape.

    An (N, P) state tile stays in registers, so BLOCK_P shrinks as dstate grows. The forward walks the state in
    blocks of FWD_SUB_N rows of dstate (SUB_N); at dstate 256 its table leads with 8 warps and BLOCK_P 16 or 32,
    the configs that compile for sm_90 without spills in the chunk loop
    (benchmarks/results/ssd-fwd-large-dstate-sm90-cpu-2026-12-07.md).
    """
    bn = block_n(dstate)
    bp_max = max(16, min(next_pow2(headdim), 8192 // bn))
    # num_stages=1 with BLOCK_P < 64 miscompiles under Triton 3.6 on an H100 (wrong y, illegal addresses).
    if kind == "fwd" and bn >= 256:
        table = [(32, 8, 2), (16, 8, 2), (16, 4, 2), (32, 4, 2), (32, 8, 3)]
    elif kind == "fwd":
        table = [(64, 4, 2), (64, 8, 2), (32, 4, 2), (16, 4, 2), (64, 4, 3)]
    else:
        table = [(64, 4, 2), (64, 8, 2), (32, 4, 2), (32, 8, 2)]
    extra = dict(SUB_N=min(bn, FWD_SUB_N)) if kind == "fwd" else {}
    seen, out = set(), []
    for bp, warps, stages in table:
        bp = min(bp, bp_max)
        if (bp, warps, stages) not in seen:
            seen.add((bp, warps, stages))
            out.append(dict(BLOCK_P=bp, num_warps=warps, num_stages=stages, **extra))
    return out


_TUNED: dict = {}
# Calls that move fewer elements of x than this take the first config untimed: their kernels run for
# microseconds, so no config can win back the seconds that compiling and timing the others cost (a server
# prefilling short prompts would stall on every new shape bucket).
TUNE_MIN_WORK = 1 << 21
_STATS = {"tuned": 0, "seconds": 0.0, "untuned": 0}
_FROZEN = [False]


def pick(name: str, key: tuple, candidates: list[dict], run, device: torch.device, work: int | None = None) -> dict:
    """The fastest of `candidates` for this key, timing `run(config)` once per key on CUDA.

    Falls back to the first candidate in the interpreter, on CPU, during CUDA graph capture, when `work`
    (elements of the call's input) is under TUNE_MIN_WORK and while tuning is frozen (counted as "untuned").
    """
    if (len(candidates) == 1 or interpreting() or device.type != "cuda" or torch.cuda.is_current_stream_capturing()
            or (work is not None and work < TUNE_MIN_WORK)):
        return _TUNED.get((name, key), candidates[0])
    if (name, key) not in _TUNED and _FROZEN[0]:
        _STATS["untuned"] += 1
        return candidates[0]
    if (name, key) not in _TUNED:
        from triton.testing import do_bench

        started = time.perf_counter()
        times = [do_bench(lambda c=c: run(c), warmup=5, rep=20) for c in candidates]
        _TUNED[(name, key)] = candidates[min(range(len(times)), key=times.__getitem__)]
        _STATS["tuned"] += 1
        _STATS["seconds"] += time.perf_counter() - started
    return _TUNED[(name, key)]


def tuning_stats() -> dict:
    """Keys tuned so far in this process ("tuned"), the seconds spent compiling and timing their configs
    ("seconds") and the calls that took a first config untimed because tuning was frozen ("untuned")."""
    return dict(_STATS)


def tuned_configs() -> dict:
    """The configs tuned so far in this process, {(kernel name, key): config} (a copy)."""
    return dict(_TUNED)


def freeze_tuning(frozen: bool = True) -> None:
    """Process-wide: while frozen, no key is tuned; keys tuned earlier keep their configs."""
    _FROZEN[0] = bool(frozen)


def tuning_is_frozen() -> bool:
    return _FROZEN[0]


@contextmanager
def tuning_frozen():
    """Freezes tuning inside the block (e.g. the timed part of a benchmark, after its warm-up), then restores
    the previous setting."""
    before = _FROZEN[0]
    _FROZEN[0] = True
    try:
        yield
    finally:
        _FROZEN[0] = before
