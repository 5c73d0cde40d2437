"""Block sizes of the selective scan kernels, and how often the forward writes the state for the backward.

Each program owns BLOCK_D channels of one group of one batch row and walks the sequence in tiles of BLOCK_T
rows; its (BLOCK_T, BLOCK_D, dstate) tile of states lives in registers, so BLOCK_T * BLOCK_D shrinks as
dstate grows. The forward writes the state every CHECKPOINT_ROWS rows; every BLOCK_T divides it.

Version history
- v6: LOOP_CAPPED entries with PREFETCH (fwd.py v5, loads a tile ahead), after the existing ones: the block
  shapes and register caps whose loop keeps no spill with it on sm_90. Not yet timed on a GPU.
- v5: the row-walking backward's configs (bwd_rows.py), first in the backward's list.
- v4: LOOP configs for the forward's v3 (whole channels per thread, 1, 2 or 4 of them); the tile-parallel
  configs stay in the table for the tuner. Segments until 16 warps per multiprocessor (an H100 sweep at
  batch 1, L 16K: 64 segments beat 16 and 128: each program composes the segments before its own).
- v3: the tuner times the LOOP configs beside the tile-parallel ones (their gpu-marked tests passed on an H100;
  at b16 L1024 d2048 the best LOOP config ran the forward in 0.92 ms, the best tile config in 1.55 ms); the LOOP
  table leads with the sweep's best, narrow BLOCK_D entries.
- v2: LOOP_TABLE, the forward's row-by-row variant (fwd.py v2), to be tuned beside the tile-parallel configs
  once its gpu-marked tests have passed (configs(..., loop=True) lists them; the tuner does not yet).
- v1: a short config table per kernel, tuned once per shape key with the SSD tuner (timed on CUDA, the first
  config in the interpreter and during CUDA graph capture). Not yet tuned on a GPU: the order is a guess.
"""

from __future__ import annotations

import functools

import triton

from ssmkit.ops.dispatch import cuda_sm_count, interpreting

CHECKPOINT_ROWS = 128
# (BLOCK_T, BLOCK_D, num_warps) at dstate <= 16; the state tile is BLOCK_T * BLOCK_D * 16 floats. The grid is
# batch * dim / BLOCK_D programs, so the narrow-BLOCK_D entries are for batch 1 (dim / 8 programs fill an H100).
FWD_TABLE = [(16, 32, 4), (32, 32, 8), (16, 64, 8), (8, 64, 4), (32, 16, 4), (32, 8, 2)]
# The forward's LOOP variant (fwd.py v3) walks the rows of a tile one by one, each thread holding the whole
# states of BLOCK_D / (32 num_warps) channels: (BLOCK_T, BLOCK_D, num_warps). Two or four channels a thread share
# the row's B and C loads (32 loads and conversions a row); short tiles keep the unrolled loads in registers.
LOOP_TABLE = [(4, 64, 1), (8, 64, 1), (4, 128, 1), (4, 128, 2), (8, 128, 2), (4, 256, 4), (4, 256, 8), (4, 32, 1)]
# LOOP configs also timed with a register cap (maxnreg): with fwd.py v4, compiled for sm_90 as a launch on aligned
# tensors is specialized, (4, 64, 1) holds 255 registers a thread, 8 warps an SM; capped at 128, 16 warps fit and
# its tile loop keeps no spill (kernel_resources_cpu.py --aligned). An H100 sweep of fwd.py v3 (b16 L1K and b1
# L16K, dim 2048) had 128 best of {none, 128, 96, 80, 64} for every block shape it tried: (2, 64, 1) 0.58 ms at
# b16, (4, 32, 1) 0.71 ms at b1, (4, 64, 1) 0.61 / 0.78 ms.
# A fifth field, PREFETCH (fwd.py v5): 1 loads the next tile's x, dt, z while a tile is walked, 2 its B and C too;
# the entries with it keep the loop free of spills (sm_90, --aligned): at 128 registers (4, 32) and (2, 32) with 1,
# (1, 32) with 2; (2, 64) with 1 needs 168 (12 warps an SM), uncapped (cap None) it holds 254 (8 warps). Not yet
# timed on a GPU: they follow the entries without it, so an untuned call still runs the first.
LOOP_CAPPED = [(2, 64, 1, 128, 0), (4, 64, 1, 128, 0), (4, 32, 1, 128, 0),
               (4, 32, 1, 128, 1), (2, 32, 1, 128, 1), (1, 32, 1, 128, 2), (2, 64, 1, 168, 1), (2, 64, 1, None, 1)]
# The row-walking backward (bwd_rows.py): a thread per channel (its register tile of BLOCK_T states per channel
# leaves no room for two), (BLOCK_T, BLOCK_D, num_warps, maxnreg). sm_90 compile: 248-255 registers a thread at
# every BLOCK_T; (4, 32, 1) spills 488 bytes, (8, 32, 1) 2.6 KB (left out). Their GPU tests passed on an H100
# (2026-12-07), where (2, 32, 1) ran b16 L1K d2048 in 3.0 ms against 10.9 ms for the best tile config; the tuner
# times both kinds, and an untuned call runs (2, 32, 1).
BWD_ROWS_TABLE = [(2, 32, 1, None), (1, 32, 1, None), (4, 32, 1, None), (2, 64, 2, None)]
BWD_ROWS_AUTO = True
BWD_TABLE = [(16, 16, 4), (8, 32, 4), (16, 32, 8), (32, 16, 8), (16, 8, 2)]


# The forward cuts the sequence into segments (fwd.py v3) until the GPU has this many warps per multiprocessor.
WARPS_PER_SM = 16


def segment_length(seqlen: int, warps: int, sms: int, interval: int = CHECKPOINT_ROWS,
                   warps_per_sm: int = WARPS_PER_SM) -> int:
    """Rows per segment of the forward: whole checkpoint intervals, as few segments as give `sms`
    multiprocessors `warps_per_sm` warps each when the channel tiles alone bring `warps`; one segment (the
    whole sequence) when they already fill them."""
    want = triton.cdiv(warps_per_sm * sms, max(warps, 1))
    return interval * triton.cdiv(triton.cdiv(seqlen, max(want, 1)), interval)


def multiprocessors(device) -> int:
    """The device's multiprocessor count; 0 off CUDA (the interpreter: one segment unless asked for more)."""
    return cuda_sm_count(device) if device.type == "cuda" else 0


def launch_options(cfg: dict, device) -> dict:
    """A config's launch options: num_warps, PTX (inline PTX runs on CUDA, not in the interpreter) and, where
    the config has one, its register cap (a compile option; the interpreter has no registers to cap)."""
    ptx = device.type == "cuda" and not interpreting()
    options = dict(num_warps=cfg["num_warps"], PTX=ptx)
    if cfg.get("maxnreg") and ptx:
        options["maxnreg"] = cfg["maxnreg"]
    return options


def block_n(dstate: int) -> int:
    return max(2, triton.next_power_of_2(dstate))


def configs(kind: str, dstate: int, dim_per_group: int, loop: bool = False) -> list[dict]:
    """Every config the tuner may pick for "fwd" or "bwd": the table's state-tile budget (set at dstate 16) is
    kept for larger dstate by halving BLOCK_D (down to 8), then BLOCK_T; BLOCK_D never exceeds the group.
    loop=True puts the LOOP configs first (the forward's capped ones leading; the backward's row walk): the first
    config is what an untuned call runs (tuning frozen, a call too small to time, CUDA graph capture)."""
    return list(_configs(kind, dstate, dim_per_group, loop))


@functools.lru_cache(maxsize=None)
def _configs(kind: str, dstate: int, dim_per_group: int, loop: bool) -> tuple[dict, ...]:
    bn = block_n(dstate)
    group = triton.next_power_of_2(dim_per_group)
    seen, tiles, loops = set(), [], []
    for bt, bd, warps in FWD_TABLE if kind == "fwd" else BWD_TABLE:
        budget = bt * bd * 16
        bd = min(bd, group)
        while bt * bd * bn > budget:
            if bd > 8:
                bd //= 2
            else:
                bt //= 2
        if (bt, bd, warps) not in seen:
            seen.add((bt, bd, warps))
            tiles.append(dict(BLOCK_T=bt, BLOCK_D=bd, num_warps=warps))
    if kind == "bwd" and loop:
        for bt, bd, warps, cap in BWD_ROWS_TABLE:
            bd = min(bd, group)
            if bd * bn <= 2048 * warps and (bt, bd, warps, cap) not in seen:
                seen.add((bt, bd, warps, cap))
                loops.append(dict(BLOCK_T=bt, BLOCK_D=bd, num_warps=warps, LOOP=True, maxnreg=cap))
    if kind == "fwd" and loop:
        for bt, bd, warps, cap, prefetch in LOOP_CAPPED:
            if bd <= group and bd * bn <= 2048 * warps:
                loops.append(dict(BLOCK_T=bt, BLOCK_D=bd, num_warps=warps, LOOP=True, maxnreg=cap,
                                  **({"PREFETCH": prefetch} if prefetch else {})))
        for bt, bd, warps in LOOP_TABLE:
            bd = min(bd, group)
            while bd > 8 and bd * bn > 2048 * warps:  # at most 64 state elements a thread
                bd //= 2
            if (bt, bd, warps, True) not in seen:
                seen.add((bt, bd, warps, True))
                loops.append(dict(BLOCK_T=bt, BLOCK_D=bd, num_warps=warps, LOOP=True))
    return tuple(loops + tiles)
