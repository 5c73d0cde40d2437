"""The memory monitor: RSS samples see a buffer allocated during the run, windows and time-averages follow the
step-function definition on hand-made samples, and on CUDA the allocator's high-water mark catches a spike."""

import time

import numpy as np
import pytest
import torch

from ssmkit.bench.memory_monitor import MemoryMonitor, _time_average, process_rss_bytes


def test_peak_rss_rises_by_a_buffer_allocated_during_the_run():
    before = process_rss_bytes()
    with MemoryMonitor(interval_s=0.002) as m:
        buf = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, touched so it is resident
        time.sleep(0.02)
        del buf
    assert m.source == "process-rss" and len(m.values) >= 3
    assert m.peak_bytes - before >= 48 * 2**20  # allowing for pages the allocator reused
    assert m.peak_bytes >= m.avg_bytes > 0


def test_time_average_and_window_follow_the_step_function():
    m = MemoryMonitor()
    m.times, m.values = [0.0, 1.0, 3.0, 4.0], [10, 40, 20, 20]
    # each sample holds until the next: (10*1 + 40*2 + 20*1) / 4 = 27.5, truncated to whole bytes
    assert _time_average(m.times, m.values) == 27
    assert m.window(1.5, 3.5) == (40, 35)  # 40 held over [1.5, 3), 20 over [3, 3.5]: (40*1.5 + 20*0.5) / 2
    assert m.window(5.0, 6.0) == (20, 20)  # after the last sample its value holds
    assert m.window(-1.0, 0.5) == (10, 10)  # before the first sample nothing is known: the window starts there


@pytest.mark.gpu
def test_cuda_peak_is_the_allocators_high_water_mark_even_between_samples():
    device = torch.device("cuda")
    base = torch.cuda.memory_allocated(device)
    with MemoryMonitor(device, interval_s=1.0) as m:  # slower than the spike: only the allocator can see it
        spike = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
        del spike
    assert m.source == "cuda-allocator"
    assert m.peak_bytes - base >= 256 * 2**20
    assert m.avg_bytes - base < 256 * 2**20
