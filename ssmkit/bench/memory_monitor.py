"""Memory over time during a benchmark run: CUDA allocator statistics on a GPU, process RSS on CPU.

A background thread samples every `interval_s`; the run's peak and time-average come from the samples (on CUDA the
peak is the allocator's own high-water mark, which also catches spikes between samples).
"""

from __future__ import annotations

import bisect
import os
import resource
import threading
import time

import torch


def process_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; elsewhere the lifetime peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class MemoryMonitor:
    """`with MemoryMonitor() as m: run()`, then `m.peak_bytes`, `m.avg_bytes`, `m.window(t0, t1)`.

    `source`: "cuda-allocator" when `device` is a CUDA device, else "process-rss". Sample times are
    `time.perf_counter()` readings, the clock the driver uses.
    """

    def __init__(self, device: str | torch.device = "cpu", interval_s: float = 0.01):
        self.device = torch.device(device)
        self.interval_s = interval_s
        self.source = "cuda-allocator" if self.device.type == "cuda" else "process-rss"
        self.times: list[float] = []
        self.values: list[int] = []
        self._cuda_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> int:
        if self.source == "cuda-allocator":
            return torch.cuda.memory_allocated(self.device)
        return process_rss_bytes()

    def _sample(self) -> None:
        self.times.append(time.perf_counter())
        self.values.append(self._read())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "MemoryMonitor":
        if self.source == "cuda-allocator":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="ssmkit-memory-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self.source == "cuda-allocator":
            self._cuda_peak = torch.cuda.max_memory_allocated(self.device)

    @property
    def peak_bytes(self) -> int:
        return max(self._cuda_peak, max(self.values, default=0))

    @property
    def avg_bytes(self) -> int:
        return _time_average(self.times, self.values)

    def window(self, t0: float, t1: float) -> tuple[int, int]:
        """(peak, time-average) bytes over [t0, t1]: samples are a step function, each value holding until the next
        sample; the value held at t0 (the last sample before it) counts."""
        lo = max(bisect.bisect_right(self.times, t0) - 1, 0)
        idx = range(lo, max(bisect.bisect_right(self.times, t1), lo + 1))
        peak = max(self.values[i] for i in idx)
        area = 0.0
        for i in idx:
            a = max(self.times[i], t0)
            b = min(self.times[i + 1], t1) if i + 1 < len(self.times) else t1
            area += self.values[i] * max(b - a, 0.0)
        span = t1 - max(t0, self.times[lo])
        return peak, int(area / span) if span > 0 else self.values[idx[-1]]


def _time_average(times: list[float], values: list[int]) -> int:
    """Step-function average: each sample holds until the next one. One sample: its value."""
    if len(values) < 2:
        return values[0] if values else 0
    span = times[-1] - times[0]
    if span <= 0:
        return int(sum(values) / len(values))
    area = sum(v * (t1 - t0) for v, t0, t1 in zip(values, times, times[1:]))
    return int(area / span)
