"""Fused Triton selective scan (Mamba-1): forward and backward, and the decode step, for impl="triton".

`selective_scan_triton` has the keyword arguments of `selective_scan_reference`; `selective_scan_step_triton`
those of `selective_scan_step` (state updated in place, one launch, CUDA-graph safe).
"""

from __future__ import annotations

# impl="auto" keeps the reference until the gpu-marked tests of this module have passed on a GPU (issue 12);
# impl="triton" reaches the kernels directly.
AUTO_SELECTABLE = False

from .autograd import selective_scan_triton
from .step import selective_scan_step_triton

__all__ = ["selective_scan_triton", "selective_scan_step_triton"]
