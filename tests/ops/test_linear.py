"""ssmkit.ops.linear: F.linear everywhere but one row on CUDA, where a Triton GEMV takes it.

The GEMV through the public op runs under the interpreter here (`case_*`, one child process with
TRITON_INTERPRET=1, as in tests/ops/selective_scan/test_triton.py) against float64; on CPU the dispatch (exactly
F.linear, errors included); on a GPU the GEMV against float64 at the decode projections of the 1.3B presets,
inside a CUDA graph too.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

import ssmkit.ops.linear
from ssmkit.ops.linear import linear
from tests.compare import assert_close
from tests.ops.selective_scan.test_triton import interpreted_main, interpreter_cases_test

INTERPRETER_CASES = ("one_row_through_the_gemv", "what_the_gemv_cannot_take")


def case_one_row_through_the_gemv():
    """impl="triton" on one row (2-D and 1-D, widths and output features off every block), and with a SwiGLU gate,
    against float64."""
    for i, (k, n, dtype) in enumerate([(300, 70, torch.float16), (64, 9, torch.float32), (1000, 130, torch.float16)]):
        g = torch.Generator().manual_seed(i)
        x, w = torch.randn(1, k, generator=g).to(dtype), (torch.randn(n, k, generator=g) * k ** -0.5).to(dtype)
        want = F.linear(x.double(), w.double())
        assert_close(linear(x, w, impl="triton"), want, dtype, name=f"GEMV {k}->{n}")
        assert_close(linear(x[0], w, impl="triton"), want[0], dtype, name=f"GEMV {k}->{n}, 1-D row")
        gate = torch.randn(1, k, generator=g).to(dtype)
        assert_close(linear(x, w, gate=gate, impl="triton"), F.linear(F.silu(gate.double()) * x.double(), w.double()),
                     dtype, name=f"gated GEMV {k}->{n}")


def case_what_the_gemv_cannot_take():
    """impl="triton" names what it takes rather than computing something else: two rows, a bias, a mixed dtype, a
    gate of another shape."""
    x, w = torch.randn(2, 32), torch.randn(8, 32)
    for args in ((x, w, None), (x[:1], w, torch.zeros(8)), (x[:1].half(), w, None)):
        with pytest.raises(ValueError, match="takes one row"):
            linear(*args, impl="triton")
    with pytest.raises(ValueError, match="takes one row"):
        linear(x[:1], w, gate=x[:1, :16], impl="triton")


test_interpreted_gemv = interpreter_cases_test("tests.ops.test_linear", INTERPRETER_CASES)


def test_reference_and_bad_impl():
    x, w = torch.randn(1, 16), torch.randn(4, 16)
    assert torch.equal(linear(x, w, impl="reference"), F.linear(x, w))
    with pytest.raises(ValueError, match="impl"):
        linear(x, w, impl="cublas")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        linear(x, w, impl="triton")  # no GPU and no interpreter here


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_cpu_is_exactly_f_linear(rows, bias):
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, 48, generator=g), torch.randn(20, 48, generator=g)
    b = torch.randn(20, generator=g) if bias else None
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    assert torch.equal(linear(x[0], w, b), F.linear(x[0], w, b))
    gate = torch.randn(rows, 48, generator=g)
    assert torch.equal(linear(x, w, b, gate=gate), F.linear(F.silu(gate) * x, w, b))


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
        gate = torch.randn(1, k, generator=g).to("cuda", dtype)
        assert_close(linear(x, w, gate=gate), F.linear(F.silu(gate.double()) * x.double(), w.double()), dtype,
                     name=f"gated GEMV {k}->{n}")
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


if __name__ == "__main__":
    interpreted_main(globals(), sys.argv[1:])
