"""Clocks of the profiler: a mark is taken at the start and the end of every layer call.

On CPU a mark is time.perf_counter_ns() (monotonic). On CUDA a mark is a CUDA event recorded on the current stream:
recording never waits for the GPU; a mark is resolved once the GPU has passed it (query), or at the end of the run.
"""

from __future__ import annotations

import time

import torch


class CpuClock:
    """Marks are perf_counter_ns integers; every mark is ready as soon as it is taken."""

    name = "cpu"

    def __init__(self):
        self.origin = time.perf_counter_ns()

    def mark(self) -> int:
        return time.perf_counter_ns()

    def ready(self, mark) -> bool:
        return True

    def since_origin(self, mark: int) -> int:
        return mark - self.origin

    def elapsed_ns(self, start: int, end: int) -> int:
        return end - start

    def synchronize(self) -> None:
        pass


class CudaClock:
    """Marks are CUDA events with timing enabled, recorded on the current stream of `device`.

    elapsed_time has a resolution of about 0.5 us; values are converted from milliseconds to integer ns.
    """

    name = "cuda"

    def __init__(self, device):
        self.device = torch.device(device)
        self.origin = self.mark()

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def ready(self, mark: torch.cuda.Event) -> bool:
        return mark.query()

    def since_origin(self, mark: torch.cuda.Event) -> int:
        return self.elapsed_ns(self.origin, mark)

    def elapsed_ns(self, start: torch.cuda.Event, end: torch.cuda.Event) -> int:
        return round(start.elapsed_time(end) * 1e6)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


def make_clock(kind: str, device) -> CpuClock | CudaClock:
    """kind "auto" picks CUDA events for a model on a CUDA device and the CPU clock otherwise."""
    if kind not in ("auto", "cpu", "cuda"):
        raise ValueError(f"clock: expected 'auto', 'cpu' or 'cuda', got {kind!r}")
    device = torch.device(device)
    if kind == "cuda" or (kind == "auto" and device.type == "cuda"):
        if device.type != "cuda":
            raise ValueError(f"clock: 'cuda' needs a model on a CUDA device, got {device}")
        return CudaClock(device)
    return CpuClock()
