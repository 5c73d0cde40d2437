"""HiPPO-LegS against its defining formula and a small matrix written out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.ops.s4 import hippo_legs
from tests.compare import assert_close


def test_hippo_legs_of_size_3_equals_the_hand_written_matrix():
    s3, s5, s15 = math.sqrt(3), math.sqrt(5), math.sqrt(15)
    A_expected = torch.tensor([[-1, 0, 0], [-s3, -2, 0], [-s5, -s15, -3]], dtype=torch.float64)
    A, B = hippo_legs(3)
    assert_close(A, A_expected, name="A")
    assert_close(B, torch.tensor([1, s3, s5], dtype=torch.float64), name="B")


@pytest.mark.parametrize("N", [1, 2, 7, 16])
def test_hippo_legs_entries_follow_the_formula(N):
    A, B = hippo_legs(N)
    A_expected = torch.zeros(N, N, dtype=torch.float64)
    for n in range(N):
        for k in range(N):
            if n > k:
                A_expected[n, k] = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
            elif n == k:
                A_expected[n, k] = -(n + 1)
    assert_close(A, A_expected, name="A")
    assert_close(B, torch.tensor([math.sqrt(2 * n + 1) for n in range(N)], dtype=torch.float64), name="B")


def test_hippo_legs_honours_dtype():
    A, B = hippo_legs(4, dtype=torch.float32)
    assert A.dtype == B.dtype == torch.float32


@pytest.mark.parametrize("N", [0, -2, 2.0, True])
def test_hippo_legs_rejects_a_bad_size(N):
    with pytest.raises(ValueError, match="^N: expected an int >= 1"):
        hippo_legs(N)
