"""norm_linear with conv=: a Mamba mixer's in_proj and the decode step of its short conv as one op.

The features conv.start .. conv.start + dim - 1 of the projection come out through causal_conv1d_step, whose state
is rolled in place; in the one-row GEMV's epilogue on CUDA (and under the interpreter), composed elsewhere. Checked
against float64 (the projection, then the conv written out by hand) and, for the state, against the old state
shifted by one: its first width - 1 slots are copies, bit for bit.

Interpreter checks (`case_*`) run in one child process with TRITON_INTERPRET=1 (see
tests/ops/selective_scan/test_triton.py); GPU tests carry the `gpu` mark.
"""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from ssmkit.ops.conv1d import ConvStep
from ssmkit.ops.norm import norm_linear
from tests.compare import assert_close
from tests.ops.norm.test_norm_linear import make, spec64
from tests.ops.selective_scan.test_triton import interpreted_main, interpreter_cases_test

INTERPRETER_CASES = ("mamba_layouts", "launch_shapes", "state_and_bias_forms")


def conv_inputs(rows, dim, width, start, dtype, *, state_dtype=None, bias=True, seed=0, device="cpu"):
    """A ConvStep over features start .. start + dim - 1: a random state, filter and bias."""
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(rows, dim, width, generator=g).to(device=device, dtype=state_dtype or dtype)
    weight = (0.5 * torch.randn(dim, width, generator=g)).to(device=device, dtype=dtype)
    b = (0.1 * torch.randn(dim, generator=g)).to(device=device, dtype=dtype) if bias else None
    return ConvStep(state, weight, b, start, "silu")


def spec_conv64(projected64: torch.Tensor, conv: ConvStep, old_state: torch.Tensor) -> torch.Tensor:
    """float64: the projection with the conv's features replaced by silu(bias + sum_j w_j window_j), the window
    being the old state's last width - 1 inputs and the new one."""
    dim = old_state.shape[1]
    piece = slice(conv.start, conv.start + dim)
    window = torch.cat([old_state[:, :, 1:].double(), projected64[:, piece, None]], dim=2)
    v = (window * conv.weight.double()).sum(-1)
    if conv.bias is not None:
        v = v + conv.bias.double()
    if conv.activation == "silu":
        v = F.silu(v)
    out = projected64.clone()
    out[:, piece] = v
    return out


def check(kw, conv: ConvStep, impl="triton"):
    old = conv.state.clone()
    out, res = norm_linear(**kw, eps=1e-5, conv=conv, impl=impl)
    projected64 = spec64(kw)
    dtype = kw["weight"].dtype
    assert out.dtype == dtype and out.shape == projected64.shape
    assert_close(out, spec_conv64(projected64, conv, old), dtype, name="out vs float64")
    dim, width = old.shape[1:]
    assert torch.equal(conv.state[:, :, :width - 1], old[:, :, 1:]), "state: the older inputs shifted by one"
    newest = projected64[:, conv.start:conv.start + dim]
    assert_close(conv.state[:, :, -1], newest, dtype, name="state: the newest input is the projection")
    # the same call composed: the projection, then the conv step's own op (from the same old state)
    state_ref = old.clone()
    out_ref, res_ref = norm_linear(**kw, eps=1e-5, conv=conv._replace(state=state_ref), impl="reference")
    assert_close(out, out_ref, dtype, name="out vs the composed ops")
    assert_close(conv.state, state_ref, dtype, name="state vs the composed ops")
    if res_ref is not None:
        assert torch.equal(res, res_ref), "new residual"


# ---------------------------------------------------------------- interpreter cases (child process)

def case_mamba_layouts():
    """Mamba-1 (x first: start 0, then z) and Mamba-2 (z, then xBC, then dt) in_proj layouts after a residual add
    + norm; conv features off the output blocks; 1 and 2 rows (batch)."""
    for i, (rows, dim_in, n, start, dim) in enumerate([(1, 96, 80, 0, 40), (1, 128, 150, 37, 101),
                                                      (2, 100, 70, 20, 33)]):
        kw = make(rows, dim_in, n, torch.float16, residual="tensor", seed=30 + i)
        try:
            check(kw, conv_inputs(rows, dim, 4, start, torch.float16, seed=i))
        except AssertionError as e:
            raise AssertionError(f"rows={rows} n={n} conv {start}..{start + dim}: {e}") from None


def case_launch_shapes():
    """Blocks of 2, 4, 16 features; persistent grids walking several blocks (the next block's state window read
    with its weight) and one block a program."""
    import ssmkit.ops.norm.triton.linear as kernel

    picked = kernel.pick_config
    try:
        for cfg in (kernel.Config(4, 0, False, 4, 1, 2), kernel.Config(2, 0, False, 4, 1, 3),
                    kernel.Config(16, 0, False, 8, 1), kernel.Config(4, 0, False, 4, 1)):
            kernel.pick_config = lambda m, k, n, norm=True, cfg=cfg: cfg
            kw = make(1, 72, 90, torch.float16, residual="tensor", seed=cfg.block_n)
            try:
                check(kw, conv_inputs(1, 50, 4, 31, torch.float16, seed=cfg.programs_per_sm))
            except AssertionError as e:
                raise AssertionError(f"{cfg}: {e}") from None
    finally:
        kernel.pick_config = picked


def case_state_and_bias_forms():
    """A float32 conv state under a float16 projection, no conv bias, width 3 (padded to 4), no activation."""
    kw = make(1, 64, 48, torch.float16, residual="none", seed=40)
    check(kw, conv_inputs(1, 24, 4, 10, torch.float16, state_dtype=torch.float32, seed=1))
    kw = make(1, 64, 48, torch.float16, residual="tensor", seed=41)
    check(kw, conv_inputs(1, 30, 4, 0, torch.float16, bias=False, seed=2))
    kw = make(1, 64, 48, torch.float16, residual="tensor", seed=42)
    check(kw, conv_inputs(1, 17, 3, 5, torch.float16, seed=3))
    kw = make(1, 64, 48, torch.float16, residual="tensor", seed=43)
    check(kw, conv_inputs(1, 20, 4, 28, torch.float16, seed=4)._replace(activation=None))


# ---------------------------------------------------------------- tests

test_interpreted_kernel_matches_float64_and_the_composed_ops = interpreter_cases_test(
    "tests.ops.norm.test_norm_linear_conv", INTERPRETER_CASES)


def test_composed_path_matches_float64():
    """Off CUDA (and for shapes the GEMV does not take) the projection, then the conv step's op."""
    for rows, start in ((1, 0), (3, 12)):
        kw = make(rows, 48, 60, torch.float32, residual="tensor", seed=rows)
        check(kw, conv_inputs(rows, 30, 4, start, torch.float32, seed=rows), impl="auto")


def test_bad_conv_arguments_are_named():
    kw = make(2, 32, 40, torch.float32, residual="tensor")
    good = conv_inputs(2, 16, 4, 8, torch.float32)
    for conv, match in ((good._replace(start=30), "conv.start"), (good._replace(start=-1), "conv.start"),
                        (conv_inputs(3, 16, 4, 8, torch.float32), r"conv: expected x of shape \(3, K\)"),
                        (good._replace(weight=good.weight[:, :3]), "conv.weight"),
                        (good._replace(bias=good.bias[:5]), "conv.bias"),
                        (good._replace(activation="relu"), "conv.activation"),
                        ((good.state, good.weight), "ConvStep")):
        with pytest.raises(ValueError, match=match):
            norm_linear(**kw, conv=conv)
    assert torch.equal(good.state, conv_inputs(2, 16, 4, 8, torch.float32).state), "a refused call wrote the state"


@pytest.mark.gpu
@pytest.mark.parametrize("dim_in, n, start, dim", [(768, 3352, 1536, 1792), (768, 3072, 0, 1536),
                                                   (2048, 8448, 4096, 4352)])
def test_kernel_matches_float64_on_gpu(dim_in, n, start, dim):
    """bf16 at the 130M / 1.3B in_proj widths (Mamba-2: z, xBC, dt; Mamba: x, z), the GEMV pick_config hands out."""
    kw = make(1, dim_in, n, torch.bfloat16, residual="tensor", device="cuda")
    check(kw, conv_inputs(1, dim, 4, start, torch.bfloat16, device="cuda"))


if __name__ == "__main__":
    interpreted_main(globals(), sys.argv[1:])
