"""Programmatic dependent launch (PDL, compute capability 9.0+) for the decode-step kernels.

A decode step is a chain of short launches (norm + projection, conv step, SSD or scan step, ...), each of a few
microseconds, and each normally starts only after the one before has finished and its memory is flushed. With
PDL a kernel may start as soon as every program of the one before has said so (`let_next_start`); it then reads
what does not depend on earlier launches (a projection's weight, which no decode kernel writes) and waits
(`wait_for_previous`) before it reads anything an earlier launch wrote and before it writes anything. The
weight bytes of the next projection are then in flight while the step before it finishes.

The rule every kernel launched with PDL keeps: before `wait_for_previous`, read only tensors no kernel of the
chain writes. A kernel's wait covers the whole chain before it: the launch before it completed only after its
own wait, and so on back.

`PDL_AUTO = False` turns it off everywhere (each kernel then waits for the one before, as without PDL).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .dispatch import interpreting

PDL_AUTO = True


def pdl_options(device: torch.device) -> dict:
    """The launch keywords of a PDL kernel on `device`: PDL=True with launch_pdl on a CUDA device of compute
    capability 9.0 or later (not in the interpreter, which has no grid dependencies); PDL=False elsewhere."""
    on = PDL_AUTO and device.type == "cuda" and not interpreting() and _hopper_or_later(device.index)
    return dict(PDL=True, launch_pdl=True) if on else dict(PDL=False)


@functools.lru_cache(maxsize=None)
def _hopper_or_later(index: int | None) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


@triton.jit
def wait_for_previous(PDL: tl.constexpr):
    """Blocks until the launch before this one has completed and its writes are visible (no-op without PDL)."""
    if PDL:
        tl.extra.cuda.gdc_wait()


@triton.jit
def let_next_start(PDL: tl.constexpr):
    """Allows the next launch to start once every program of this one has passed here (no-op without PDL)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
