"""Programmatic dependent launch (PDL, compute capability 9.0+) for the decode-step kernels.

A decode step is a chain of short launches (norm + projection, conv step, SSD or scan step, ...), each of a few
microseconds, and each normally starts only after the one before has finished and its memory is flushed. With
PDL a kernel may start as soon as every program of the one before has passed its wait (`wait_for_previous`);
it then reads what does not depend on earlier launches (a projection's weight, which no decode kernel writes) and
waits in turn before it reads anything an earlier launch wrote and before it writes anything. The
weight bytes of the next projection are then in flight while the step before it finishes.

The rule every kernel launched with PDL keeps: before `wait_for_previous`, read only tensors no kernel of the
chain writes. A kernel's wait covers the whole chain before it: the launch before it completed only after its
own wait, and so on back.

`PDL_AUTO = False` turns it off everywhere (each kernel then waits for the one before, as without PDL).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import cuda_capability, interpreting

PDL_AUTO = True


def pdl_options(device: torch.device) -> dict:
    """The launch keywords of a PDL kernel on `device`: PDL=True with launch_pdl on a CUDA device of compute
    capability 9.0 or later (not in the interpreter, which has no grid dependencies); PDL=False elsewhere."""
    on = PDL_AUTO and device.type == "cuda" and not interpreting() and cuda_capability(device)[0] >= 9
    return dict(PDL=True, launch_pdl=True) if on else dict(PDL=False)


@triton.jit
def wait_for_previous(PDL: tl.constexpr):
    """Blocks until the launch before this one has completed and its writes are visible, then allows the next
    launch to start once every program of this one has passed here (no-op without PDL). Every PDL kernel calls it
    before its first read of anything an earlier launch wrote: from there on the next launch's prologue (its
    weight loads) may overlap this kernel's work."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
