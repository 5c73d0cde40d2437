"""Optional kernel-level detail: torch.profiler runs beside the Profiler, every layer call is a labelled range
("ssmkit.call.<call_id>"), and each aten op (CPU) or GPU kernel (CUDA) inside a range is attributed to that call.

The ops are the labelled range's direct children (their time includes their own children, so nothing is counted
twice); the GPU kernels are those launched anywhere below the range, with their device time.
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile, record_function

LABEL = "ssmkit.call."


def start(device: torch.device) -> profile:
    """A running torch.profiler session for CPU ops, and CUDA kernels when `device` is a GPU."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    prof.__enter__()
    return prof


def open_range(call_id: int) -> record_function:
    """The labelled range of one layer call; close it with close_range."""
    rf = record_function(f"{LABEL}{call_id}")
    rf.__enter__()
    return rf


def close_range(rf: record_function) -> None:
    rf.__exit__(None, None, None)


def kernel_rows(prof: profile, run_id: int) -> list[tuple]:
    """Stops `prof` and returns kernels-table rows (run_id, call_id, name, device_type, duration_ns)."""
    prof.__exit__(None, None, None)
    rows = []
    for event in prof.events():
        if not event.name.startswith(LABEL):
            continue
        call_id = int(event.name[len(LABEL):])
        for child in event.cpu_children:
            rows.append((run_id, call_id, child.name, "cpu", round(child.cpu_time_total * 1e3)))
        stack = list(event.cpu_children)
        while stack:
            op = stack.pop()
            for kernel in getattr(op, "kernels", ()):
                rows.append((run_id, call_id, kernel.name, "cuda", round(kernel.duration * 1e3)))
            stack.extend(op.cpu_children)
    return rows
