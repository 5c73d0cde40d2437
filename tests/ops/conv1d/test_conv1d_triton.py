"""The Triton causal conv1d against the float64 reference: outputs, final states and the gradients of x, weight,
bias and the initial state; the decode step in place; batch rows and packed sequences.

Interpreter checks (`case_*`) run in one child process with TRITON_INTERPRET=1 (see
tests/ops/selective_scan/test_triton.py); GPU tests carry the `gpu` mark.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from ssmkit.ops.conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_step, causal_conv1d_step_ref
from tests.compare import assert_close
from tests.ops.selective_scan.test_triton import expect, interpreted_main, run_interpreted

INTERPRETER_CASES = ("shapes", "packed", "float16", "strided_x", "awkward_shapes", "step", "dispatch")
GRAD_NAMES = ("x", "weight", "bias", "initial_state")


def make_inputs(batch, seqlen, dim, width, *, nseq=None, bias=True, init=True, dtype=torch.float32, device="cpu",
                seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)  # noqa: E731
    nseq = batch if nseq is None else nseq
    return dict(x=rnd(batch, seqlen, dim), weight=rnd(dim, width) / width ** 0.5, bias=rnd(dim) if bias else None,
                initial_state=rnd(nseq, dim, width) if init else None)


def run(fn, inp, activation, cu_seqlens=None, dtype=None, seed=1):
    """fn's (out, final_state, grads) for random output and final-state gradients; inputs cast to dtype."""
    leaves = {k: None if v is None else v.detach().to(dtype or v.dtype).requires_grad_() for k, v in inp.items()}
    out, final = fn(leaves["x"], leaves["weight"], leaves["bias"], activation, leaves["initial_state"], True,
                    cu_seqlens)
    g = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=g).to(out.device)
    dfinal = torch.randn(final.shape, generator=g).to(out.device)
    ((out * dout.to(out.dtype)).sum() + (final * dfinal.to(final.dtype)).sum()).backward()
    return out.detach(), final.detach(), {k: v.grad for k, v in leaves.items() if v is not None}


def check(inp, activation, cu_seqlens=None):
    from ssmkit.ops.conv1d.triton import causal_conv1d_triton

    dtype = inp["x"].dtype
    out, final, grads = run(causal_conv1d_triton, inp, activation, cu_seqlens)
    out_ref, final_ref, grads_ref = run(causal_conv1d_ref, inp, activation, cu_seqlens, dtype=torch.float64)
    assert_close(out, out_ref, dtype, name="out")
    assert_close(final, final_ref, dtype, name="final_state")
    for name in GRAD_NAMES:
        if name in grads_ref:
            assert grads[name].dtype == inp[name].dtype, (name, grads[name].dtype)
            assert_close(grads[name], grads_ref[name], dtype, grad=True, name=f"d{name}")


# ---------------------------------------------------------------- interpreter cases (child process)

SHAPES = {
    # name: (batch, seqlen, dim, width, activation, extras)
    "odd_length_silu": (2, 37, 10, 4, "silu", dict()),
    "width3_no_bias": (1, 45, 70, 3, None, dict(bias=False)),
    "shorter_than_width": (2, 2, 5, 4, "silu", dict()),
    "length_one_no_state": (3, 1, 6, 4, "silu", dict(init=False)),
    "width_one": (2, 9, 6, 1, None, dict()),
}


def case_shapes():
    """Every output and gradient vs float64 for widths 1, 3, 4 (5 in awkward_shapes), lengths shorter than the
    width, with and without a state."""
    for name, (batch, seqlen, dim, width, act, extras) in SHAPES.items():
        try:
            check(make_inputs(batch, seqlen, dim, width, seed=seqlen, **extras), act)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


def case_packed():
    """Packed sequences (some shorter than the width) never see each other's inputs; each has its own state."""
    cu = torch.tensor([0, 1, 3, 10, 31, 33], dtype=torch.int32)
    for act, init in ((None, False), ("silu", True)):
        check(make_inputs(1, 33, 12, 4, nseq=5, init=init, seed=7), act, cu_seqlens=cu)


def case_float16():
    check(make_inputs(2, 40, 24, 4, dtype=torch.float16, seed=3), "silu")


def case_strided_x():
    """x read in place from a wider buffer (the Mamba mixer's half of in_proj) gives the contiguous result."""
    from ssmkit.ops.conv1d.triton import causal_conv1d_triton

    inp = make_inputs(2, 19, 8, 4, seed=4)
    wide = torch.randn(2, 19, 16)
    wide[..., 8:] = inp["x"]
    strided = wide[..., 8:]
    assert not strided.is_contiguous()
    args = (inp["weight"], inp["bias"], "silu", inp["initial_state"], True)
    out_s, final_s = causal_conv1d_triton(strided, *args)
    out_c, final_c = causal_conv1d_triton(inp["x"], *args)
    assert torch.equal(out_s, out_c) and torch.equal(final_s, final_c)


def case_awkward_shapes():
    """Hypothesis: lengths 1..50, widths 1..5, channel counts off the block size, packed or not."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=5, deadline=None, database=None)
    @given(seqlen=st.integers(1, 50), dim=st.sampled_from([1, 3, 65]), width=st.integers(1, 5),
           packed=st.booleans(), act=st.sampled_from([None, "silu"]))
    def run_one(seqlen, dim, width, packed, act):
        cu = None
        if packed and seqlen >= 3:
            cu = torch.tensor([0, 1, seqlen // 2 + 1, seqlen], dtype=torch.int64)
        nseq = 1 if cu is None else 3
        check(make_inputs(1, seqlen, dim, width, nseq=nseq, seed=seqlen), act, cu_seqlens=cu)

    run_one()


def check_step(device="cpu", state_dtype=torch.float32):
    """The step rolls a strided state in place and, token by token, reproduces the full conv and its state."""
    from ssmkit.ops.conv1d.triton import causal_conv1d_step_triton

    inp = make_inputs(3, 6, 20, 4, device=device, seed=8)
    storage = inp["initial_state"].transpose(1, 2).contiguous().to(state_dtype)  # (batch, width, dim)
    state = storage.transpose(1, 2)  # (batch, dim, width), width not innermost
    expected = state.clone()
    outs = []
    for t in range(6):
        x_t = inp["x"][:, t]
        y = causal_conv1d_step_triton(state, x_t, inp["weight"], inp["bias"], "silu")
        y_ref = causal_conv1d_step_ref(expected, x_t, inp["weight"], inp["bias"], "silu")
        assert_close(y, y_ref, torch.float32 if state_dtype == torch.float32 else state_dtype, name=f"y step {t}")
        assert torch.equal(state, expected), f"state after step {t}"
        outs.append(y)
    if state_dtype == torch.float32:
        full, final = causal_conv1d_ref(inp["x"], inp["weight"], inp["bias"], "silu", inp["initial_state"], True)
        assert_close(torch.stack(outs, 1), full, torch.float32, name="steps vs full conv")
        assert_close(state, final, torch.float32, name="state vs final state")


def case_step():
    check_step()
    check_step(state_dtype=torch.float16)


def case_dispatch():
    """impl="triton" runs the kernels; float64 falls back to the reference with a warning."""
    inp = make_inputs(1, 10, 6, 4, seed=9)
    out = causal_conv1d(inp["x"], inp["weight"], inp["bias"], activation="silu", impl="triton")
    assert_close(out, causal_conv1d_ref(*[inp[k].double() for k in ("x", "weight", "bias")], "silu"), torch.float32)
    state = inp["initial_state"].clone()
    y = causal_conv1d_step(state, inp["x"][:, 0], inp["weight"], inp["bias"], activation="silu", impl="triton")
    assert_close(y, causal_conv1d_step_ref(inp["initial_state"].clone(), inp["x"][:, 0], inp["weight"], inp["bias"],
                                           "silu"), torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out64 = causal_conv1d(inp["x"].double(), inp["weight"].double(), impl="triton")
    assert any("using the reference" in str(m.message) for m in caught), [str(m.message) for m in caught]
    assert torch.equal(out64, causal_conv1d_ref(inp["x"].double(), inp["weight"].double()))


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.ops.conv1d.test_conv1d_triton", INTERPRETER_CASES)


def test_interpreted_conv_matches_float64_outputs_states_and_all_gradients(interpreted):
    expect(interpreted, "shapes")


def test_interpreted_conv_keeps_packed_sequences_apart(interpreted):
    expect(interpreted, "packed")


def test_interpreted_conv_float16_within_float16_tolerances(interpreted):
    expect(interpreted, "float16")


def test_interpreted_conv_reads_strided_x_in_place(interpreted):
    expect(interpreted, "strided_x")


def test_interpreted_conv_matches_float64_for_awkward_shapes(interpreted):
    expect(interpreted, "awkward_shapes")


def test_interpreted_conv_step_rolls_strided_state_in_place_and_matches_full_conv(interpreted):
    expect(interpreted, "step")


def test_interpreted_conv_dispatch_runs_triton_and_falls_back_for_float64(interpreted):
    expect(interpreted, "dispatch")


def test_triton_conv_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    from ssmkit.ops.conv1d.triton import causal_conv1d_triton

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    inp = make_inputs(1, 4, 3, 4)
    with pytest.raises(ValueError, match="^impl: 'triton' needs CUDA tensors"):
        causal_conv1d_triton(inp["x"], inp["weight"])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("batch,seqlen,dim,width", [(4, 2048, 3072, 4), (2, 1001, 1536, 4), (1, 4097, 5120, 2),
                                                    (3, 3, 768, 4)])
def test_conv_matches_float64_on_gpu(dtype, batch, seqlen, dim, width):
    check(make_inputs(batch, seqlen, dim, width, dtype=dtype, device="cuda", seed=seqlen), "silu")


@pytest.mark.gpu
def test_conv_packed_sequences_match_float64_on_gpu():
    g = torch.Generator().manual_seed(11)
    lengths = torch.randint(1, 90, (40,), generator=g).tolist() + [700]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    inp = make_inputs(1, int(cu[-1]), 2048, 4, nseq=len(lengths), dtype=torch.bfloat16, device="cuda")
    check(inp, "silu", cu_seqlens=cu)


@pytest.mark.gpu
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_conv_step_rolls_state_in_place_on_gpu(state_dtype):
    check_step("cuda", state_dtype)


@pytest.mark.gpu
def test_conv_step_replayed_from_a_cuda_graph_matches_the_reference_step():
    from ssmkit.ops.conv1d.triton import causal_conv1d_step_triton

    inp = make_inputs(16, 4, 3072, 4, device="cuda", dtype=torch.bfloat16)
    state = inp["initial_state"].clone()
    x = inp["x"][:, 0].clone()
    causal_conv1d_step_triton(state.clone(), x, inp["weight"], inp["bias"], "silu")  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = causal_conv1d_step_triton(state, x, inp["weight"], inp["bias"], "silu")
    expected = state.clone()
    for t in range(4):
        x.copy_(inp["x"][:, t])
        graph.replay()
        y_ref = causal_conv1d_step_ref(expected, x, inp["weight"], inp["bias"], "silu")
        assert_close(y, y_ref, torch.bfloat16, name=f"y replay {t}")
        assert torch.equal(state, expected), f"state replay {t}"


if __name__ == "__main__":
    interpreted_main(globals(), sys.argv[1:])
