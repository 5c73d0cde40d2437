"""Clocks of the profiler: a mark is taken at the start and the end of every layer call.

On CPU a mark is time.perf_counter_ns() (monotonic). On CUDA a mark is a CUDA event recorded on the current stream,
taken from a pool of events created before the run: recording never waits for the GPU; a mark is resolved once the
GPU has passed it (query), or at the end of the run, and its event goes back to the pool only after that.
"""

from __future__ import annotations

import time

import torch


class CpuClock:
    """Marks are perf_counter_ns integers; every mark is ready as soon as it is taken."""

    name = "cpu"

    def __init__(self):
        self.origin = time.perf_counter_ns()
        self.mark = time.perf_counter_ns  # the builtin itself: no Python frame per mark

    def ready(self, mark) -> bool:
        return True

    def since_origin(self, mark: int) -> int:
        return mark - self.origin

    def elapsed_ns(self, start: int, end: int) -> int:
        return end - start

    def release(self, marks: list) -> None:
        pass

    def synchronize(self) -> None:
        pass


class CudaClock:
    """Marks are CUDA events with timing enabled, recorded on the current stream of `device`.

    Events come from a free list of `pool` events created (and recorded once, so the CUDA event exists) here;
    when it runs dry a new event is made, and it joins the pool once released. `release(marks)` returns events
    whose times have been read; an event is never recorded again before that. The current stream is looked up
    by id per mark and its Stream object reused while the id is unchanged. elapsed_time has a resolution of
    about 0.5 us; values are converted from milliseconds to integer ns.
    """

    name = "cuda"

    def __init__(self, device, pool: int = 1024):
        self.device = torch.device(device)
        self.index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.created = 0  # events made so far: the pool's size, however many are out
        self._stream_id, self._stream = None, None
        self._free = [self._new_event() for _ in range(pool)]
        stream = self._current_stream()
        for event in self._free:
            event.record(stream)
        self.synchronize()
        self.origin = self.mark()

    def _new_event(self):
        self.created += 1
        return torch.cuda.Event(enable_timing=True)

    def _stream_key(self):
        """The current stream's id on this device (one call into torch, no Stream object)."""
        return torch._C._cuda_getCurrentStream(self.index)[0]

    def _make_stream(self):
        return torch.cuda.current_stream(self.device)

    def _current_stream(self):
        key = self._stream_key()
        if key != self._stream_id:
            self._stream_id, self._stream = key, self._make_stream()
        return self._stream

    def mark(self):
        event = self._free.pop() if self._free else self._new_event()
        event.record(self._current_stream())
        return event

    def ready(self, mark) -> bool:
        return mark.query()

    def since_origin(self, mark) -> int:
        return self.elapsed_ns(self.origin, mark)

    def elapsed_ns(self, start, end) -> int:
        return round(start.elapsed_time(end) * 1e6)

    def release(self, marks: list) -> None:
        """Returns resolved marks (their times read, never to be read again) to the pool."""
        self._free.extend(marks)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


def make_clock(kind: str, device, pool: int = 1024) -> CpuClock | CudaClock:
    """kind "auto" picks CUDA events for a model on a CUDA device and the CPU clock otherwise; `pool`: CUDA events
    made before the run."""
    if kind not in ("auto", "cpu", "cuda"):
        raise ValueError(f"clock: expected 'auto', 'cpu' or 'cuda', got {kind!r}")
    device = torch.device(device)
    if kind == "cuda" or (kind == "auto" and device.type == "cuda"):
        if device.type != "cuda":
            raise ValueError(f"clock: 'cuda' needs a model on a CUDA device, got {device}")
        return CudaClock(device, pool)
    return CpuClock()
