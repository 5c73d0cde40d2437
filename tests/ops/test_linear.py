"""ssmkit.ops.linear: F.linear everywhere but one row on CUDA, where a Triton GEMV takes it.

The GEMV's arithmetic runs under the interpreter in tests/ops/norm/test_norm_linear.py (case_linear_without_norm);
here: the dispatch on CPU (exactly F.linear, errors included) and, on a GPU, the GEMV against float64 at the
decode projections of the 1.3B presets, inside a CUDA graph too.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ssmkit.ops.linear
from ssmkit.ops.linear import linear
from tests.compare import assert_close


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_is_exactly_f_linear(rows, bias):
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, 48, generator=g), torch.randn(20, 48, generator=g)
    b = torch.randn(20, generator=g) if bias else None
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    assert torch.equal(linear(x[0], w, b), F.linear(x[0], w, b))


def test_mismatched_shapes_raise_as_f_linear_does():
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        linear(torch.randn(1, 8), torch.randn(4, 9))


@pytest.mark.gpu
@pytest.mark.parametrize("k, n", [(2048, 2048), (2048, 5504), (5504, 2048), (4096, 160), (4096, 2048), (300, 70)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_one_row_on_gpu_matches_float64(k, n, dtype):
    g = torch.Generator().manual_seed(k + n)
    x = torch.randn(1, k, generator=g).to("cuda", dtype)
    w = (torch.randn(n, k, generator=g) * k ** -0.5).to("cuda", dtype)
    want = F.linear(x.double(), w.double())
    with torch.no_grad():
        got = linear(x, w)
        assert_close(got, want, dtype, name=f"GEMV {k}->{n}")
        assert_close(linear(x[0], w), want[0], dtype, name=f"GEMV {k}->{n}, 1-D row")
        graph = torch.cuda.CUDAGraph()
        out = linear(x, w)  # warm-up outside the capture (compiles)
        with torch.cuda.graph(graph):
            out = linear(x, w)
        x.copy_(torch.randn(1, k, generator=g).to("cuda", dtype))
        graph.replay()
        assert_close(out, F.linear(x.double(), w.double()), dtype, name=f"GEMV {k}->{n} replayed")
    ssmkit.ops.linear.LINEAR_AUTO = False
    try:
        assert torch.equal(linear(x, w), F.linear(x, w))
    finally:
        ssmkit.ops.linear.LINEAR_AUTO = True
