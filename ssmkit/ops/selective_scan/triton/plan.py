"""Block sizes of the selective scan kernels, and how often the forward writes the state for the backward.

Each program owns BLOCK_D channels of one group of one batch row and walks the sequence in tiles of BLOCK_T
rows; its (BLOCK_T, BLOCK_D, dstate) tile of states lives in registers, so BLOCK_T * BLOCK_D shrinks as
dstate grows. The forward writes the state every CHECKPOINT_ROWS rows; every BLOCK_T divides it.

Version history
- v3: the tuner times the LOOP configs beside the tile-parallel ones (their gpu-marked tests passed on an H100;
  at b16 L1024 d2048 the best LOOP config ran the forward in 0.92 ms, the best tile config in 1.55 ms); the LOOP
  table leads with the sweep's best, narrow BLOCK_D entries.
- v2: LOOP_TABLE, the forward's row-by-row variant (fwd.py v2), to be tuned beside the tile-parallel configs
  once its gpu-marked tests have passed (configs(..., loop=True) lists them; the tuner does not yet).
- v1: a short config table per kernel, tuned once per shape key with the SSD tuner (timed on CUDA, the first
  config in the interpreter and during CUDA graph capture). Not yet tuned on a GPU: the order is a guess.
"""

from __future__ import annotations

import triton

CHECKPOINT_ROWS = 128
# (BLOCK_T, BLOCK_D, num_warps) at dstate <= 16; the state tile is BLOCK_T * BLOCK_D * 16 floats. The grid is
# batch * dim / BLOCK_D programs, so the narrow-BLOCK_D entries are for batch 1 (dim / 8 programs fill an H100).
FWD_TABLE = [(16, 32, 4), (32, 32, 8), (16, 64, 8), (8, 64, 4), (32, 16, 4), (32, 8, 2)]
# The forward's LOOP variant walks the rows of a tile one by one (BLOCK_T rows unrolled) with only the
# (BLOCK_D, dstate) state in registers: its budget is BLOCK_D * dstate, not BLOCK_T * BLOCK_D * dstate.
# Narrow BLOCK_D with 1-2 warps first: on an H100 at b16 L1024 d2048 (selective_scan_configs_gpu.py) (8, 8, 1)
# ran the forward in 0.92 ms, (4, 16, 1) and (4, 32, 2) in 0.97, (8, 64, 4) in 1.6; narrow blocks also give
# batch x dim / BLOCK_D programs enough to fill the GPU at small batch.
LOOP_TABLE = [(8, 8, 1), (4, 16, 1), (4, 32, 2), (4, 64, 4), (8, 64, 4)]
BWD_TABLE = [(16, 16, 4), (8, 32, 4), (16, 32, 8), (32, 16, 8), (16, 8, 2)]


def block_n(dstate: int) -> int:
    return max(2, triton.next_power_of_2(dstate))


def configs(kind: str, dstate: int, dim_per_group: int, loop: bool = False) -> list[dict]:
    """Every config the tuner may pick for "fwd" or "bwd": the table's state-tile budget (set at dstate 16) is
    kept for larger dstate by halving BLOCK_D (down to 8), then BLOCK_T; BLOCK_D never exceeds the group.
    loop=True adds the forward's LOOP configs (the tuner passes it)."""
    bn = block_n(dstate)
    seen, out = set(), []
    for bt, bd, warps in FWD_TABLE if kind == "fwd" else BWD_TABLE:
        budget = bt * bd * 16
        bd = min(bd, triton.next_power_of_2(dim_per_group))
        while bt * bd * bn > budget:
            if bd > 8:
                bd //= 2
            else:
                bt //= 2
        if (bt, bd, warps) not in seen:
            seen.add((bt, bd, warps))
            out.append(dict(BLOCK_T=bt, BLOCK_D=bd, num_warps=warps))
    if kind == "fwd" and loop:
        for bt, bd, warps in LOOP_TABLE:
            bd = min(bd, triton.next_power_of_2(dim_per_group))
            while bd > 8 and bd * bn > 2048:
                bd //= 2
            if (bt, bd, warps, True) not in seen:
                seen.add((bt, bd, warps, True))
                out.append(dict(BLOCK_T=bt, BLOCK_D=bd, num_warps=warps, LOOP=True))
    return out
