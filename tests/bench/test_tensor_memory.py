"""The tensor peak-memory tracker counts exactly the bytes of tensors alive at once."""

import torch

from ssmkit.bench.tensor_memory import PeakTensorMemory


def test_peak_equals_the_largest_set_of_live_tensors():
    with PeakTensorMemory() as mem:
        a = torch.ones(1000, 250)  # 1,000,000 bytes
        b = torch.ones(500, 250)  # 500,000 bytes: peak 1.5 MB
        del a, b
        c = torch.ones(100, 250)  # 100,000 bytes
    assert mem.peak_bytes == 1_500_000
    assert mem.live == 100_000
    del c


def test_views_do_not_count_twice():
    with PeakTensorMemory() as mem:
        a = torch.zeros(10_000)
        v = a.view(100, 100)[:, :50]
        w = v.t()
    assert mem.peak_bytes == 40_000
    del a, v, w


def test_views_of_tensors_made_before_the_region_count_nothing():
    weight = torch.ones(256, 256)
    with PeakTensorMemory() as mem:
        wt = weight.t()
        x = torch.nn.functional.linear(torch.ones(4, 256), weight)  # 4 KiB input + 4 KiB output
    assert mem.peak_bytes == 2 * 4 * 256 * 4
    del wt, x
