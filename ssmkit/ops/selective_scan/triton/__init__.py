"""Fused Triton selective scan (Mamba-1): forward and backward, and the decode step, for impl="triton".

`selective_scan_triton` has the keyword arguments of `selective_scan_reference`; `selective_scan_step_triton`
those of `selective_scan_step` (state updated in place, one launch, CUDA-graph safe).
"""

from __future__ import annotations

# impl="auto" takes these kernels on CUDA: every gpu-marked test of this module passed on an H100 (2026-11-25,
# torch 2.11, triton 3.6); the forward v3 configs, segments and the row-walking backward on 2026-12-07.
AUTO_SELECTABLE = True

from .autograd import selective_scan_triton
from .step import selective_scan_step_triton

__all__ = ["selective_scan_triton", "selective_scan_step_triton"]
