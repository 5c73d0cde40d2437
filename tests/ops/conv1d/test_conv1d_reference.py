"""causal_conv1d (reference) against the defining sum written as a loop, per-sequence runs and autograd."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.ops.conv1d import causal_conv1d
from tests.compare import assert_close

F64 = torch.float64


def conv_loop(x, weight, bias=None, activation=None, initial_state=None):
    """x (batch, seqlen, dim), weight (dim, width), initial_state (batch, dim, width) or None.

    Returns out (batch, seqlen, dim) and the final state (batch, dim, width): the last `width` inputs.
    """
    batch, seqlen, dim = x.shape
    width = weight.shape[1]

    def inp(t):  # the input at time t (batch, dim); t < 0 reads the state, whose newest column is t = -1
        if t >= 0:
            return x[:, t, :]
        if initial_state is None:
            return torch.zeros(batch, dim, dtype=x.dtype)
        return initial_state[:, :, width + t]

    out = torch.zeros(batch, seqlen, dim, dtype=x.dtype)
    for t in range(seqlen):
        acc = torch.zeros(batch, dim, dtype=x.dtype) if bias is None else bias.expand(batch, dim).clone()
        for k in range(width):
            acc = acc + weight[:, k] * inp(t - (width - 1) + k)
        out[:, t] = acc * torch.sigmoid(acc) if activation == "silu" else acc
    final = torch.stack([inp(seqlen - width + j) for j in range(width)], dim=-1)
    return out, final


def _inputs(batch, seqlen, dim, width, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seqlen, dim, generator=g, dtype=dtype)
    weight = torch.randn(dim, width, generator=g, dtype=dtype)
    bias = torch.randn(dim, generator=g, dtype=dtype)
    state = torch.randn(batch, dim, width, generator=g, dtype=dtype)
    return x, weight, bias, state


@pytest.mark.parametrize("seqlen", [1, 3, 15, 63])
@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_state", [False, True])
def test_causal_conv1d_matches_explicit_loop_in_float64(seqlen, width, activation, with_state):
    x, weight, bias, state = _inputs(2, seqlen, 5, width)
    h0 = state if with_state else None
    out, final = causal_conv1d(
        x, weight, bias, activation=activation, initial_state=h0, return_final_state=True, impl="reference"
    )
    want_out, want_final = conv_loop(x, weight, bias, activation, h0)
    assert_close(out, want_out)
    assert_close(final, want_final, name="final_state")


def test_causal_conv1d_without_bias_matches_explicit_loop():
    x, weight, _, _ = _inputs(3, 10, 4, 4)
    assert_close(causal_conv1d(x, weight), conv_loop(x, weight)[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_conv1d_low_precision_matches_float64_loop_within_dtype_tolerance(dtype):
    x, weight, bias, state = _inputs(2, 33, 8, 4, dtype=dtype)
    out, final = causal_conv1d(x, weight, bias, activation="silu", initial_state=state, return_final_state=True)
    want_out, want_final = conv_loop(x.double(), weight.double(), bias.double(), "silu", state.double())
    assert out.dtype == dtype and final.dtype == dtype
    assert_close(out, want_out, dtype)
    assert_close(final, want_final, dtype, name="final_state")


@pytest.mark.parametrize("with_state", [False, True])
def test_cu_seqlens_equals_each_sequence_alone(with_state):
    lengths = [1, 5, 2, 9, 3]
    cu = torch.tensor([0, 1, 6, 8, 17, 20])
    x, weight, bias, _ = _inputs(1, sum(lengths), 6, 4)
    states = torch.randn(len(lengths), 6, 4, dtype=F64) if with_state else None
    out, final = causal_conv1d(
        x, weight, bias, activation="silu", initial_state=states, return_final_state=True, cu_seqlens=cu
    )
    for i, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        h0 = None if states is None else states[i : i + 1]
        want_out, want_final = conv_loop(x[:, start:end], weight, bias, "silu", h0)
        assert_close(out[:, start:end], want_out, name=f"out of sequence {i}")
        assert_close(final[i : i + 1], want_final, name=f"final_state of sequence {i}")


@pytest.mark.parametrize("split", [1, 2, 3, 10, 19])
def test_conv_over_concatenation_equals_conv_of_first_part_then_second_with_state(split):
    x, weight, bias, state = _inputs(2, 20, 5, 4)
    full, full_final = causal_conv1d(x, weight, bias, initial_state=state, return_final_state=True)
    a, a_final = causal_conv1d(x[:, :split], weight, bias, initial_state=state, return_final_state=True)
    b, b_final = causal_conv1d(x[:, split:], weight, bias, initial_state=a_final, return_final_state=True)
    assert_close(torch.cat([a, b], dim=1), full)
    assert_close(b_final, full_final, name="final_state")


def test_gradcheck_in_float64_for_all_inputs_including_initial_state():
    x, weight, bias, state = _inputs(2, 6, 3, 3)
    args = [t.clone().requires_grad_() for t in (x, weight, bias, state)]

    def fn(x, weight, bias, state):
        return causal_conv1d(x, weight, bias, activation="silu", initial_state=state, return_final_state=True)

    assert torch.autograd.gradcheck(fn, args)


def test_gradcheck_in_float64_with_cu_seqlens():
    x, weight, bias, _ = _inputs(1, 7, 2, 3)
    states = torch.randn(3, 2, 3, dtype=F64)
    args = [t.clone().requires_grad_() for t in (x, weight, bias, states)]
    cu = torch.tensor([0, 2, 3, 7])

    def fn(x, weight, bias, states):
        return causal_conv1d(x, weight, bias, initial_state=states, return_final_state=True, cu_seqlens=cu)

    assert torch.autograd.gradcheck(fn, args)


def test_auto_on_cpu_is_the_reference():
    x, weight, bias, state = _inputs(2, 9, 4, 4)
    auto = causal_conv1d(x, weight, bias, initial_state=state)
    ref = causal_conv1d(x, weight, bias, initial_state=state, impl="reference")
    assert_close(auto, ref, tol=(0.0, 0.0))  # the same function runs, so the results are bitwise equal


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    seqlen=st.integers(1, 17),
    dim=st.integers(1, 7),
    width=st.integers(1, 5),
    activation=st.sampled_from([None, "silu"]),
    with_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_awkward_shapes_match_explicit_loop(batch, seqlen, dim, width, activation, with_state, seed):
    x, weight, bias, state = _inputs(batch, seqlen, dim, width, seed=seed)
    h0 = state if with_state else None
    out, final = causal_conv1d(x, weight, bias, activation=activation, initial_state=h0, return_final_state=True)
    want_out, want_final = conv_loop(x, weight, bias, activation, h0)
    assert_close(out, want_out)
    assert_close(final, want_final, name="final_state")


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=5), width=st.integers(1, 5), seed=st.integers(0, 99))
def test_awkward_packings_match_each_sequence_alone(lengths, width, seed):
    x, weight, bias, _ = _inputs(1, sum(lengths), 3, width, seed=seed)
    states = torch.randn(len(lengths), 3, width, dtype=F64)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
    out, final = causal_conv1d(x, weight, bias, initial_state=states, return_final_state=True, cu_seqlens=cu)
    for i in range(len(lengths)):
        start, end = int(cu[i]), int(cu[i + 1])
        want_out, want_final = conv_loop(x[:, start:end], weight, bias, None, states[i : i + 1])
        assert_close(out[:, start:end], want_out, name=f"out of sequence {i}")
        assert_close(final[i : i + 1], want_final, name=f"final_state of sequence {i}")


def _bad(**overrides):
    x, weight, bias, state = _inputs(1, 6, 4, 3)
    kwargs = dict(x=x, weight=weight, bias=bias, initial_state=None, cu_seqlens=None, activation=None, impl="auto")
    kwargs.update(overrides)
    x, weight, bias = kwargs.pop("x"), kwargs.pop("weight"), kwargs.pop("bias")
    return lambda: causal_conv1d(x, weight, bias, **kwargs)


@pytest.mark.parametrize(
    "overrides, argument",
    [
        (dict(x=torch.zeros(6, 4, dtype=F64)), "x"),
        (dict(weight=torch.zeros(4, 3, 1, dtype=F64)), "weight"),
        (dict(weight=torch.zeros(5, 3, dtype=F64)), "weight"),
        (dict(bias=torch.zeros(3, dtype=F64)), "bias"),
        (dict(initial_state=torch.zeros(1, 4, 2, dtype=F64)), "initial_state"),
        (dict(initial_state=torch.zeros(2, 4, 3, dtype=F64)), "initial_state"),
        (dict(activation="relu"), "activation"),
        (dict(x=torch.zeros(1, 6, 4, dtype=torch.int64)), "x"),
        (dict(impl="cuda"), "impl"),
        (dict(cu_seqlens=torch.tensor([0, 4, 3, 6])), "cu_seqlens"),
        (dict(cu_seqlens=torch.tensor([0, 2, 2, 6])), "cu_seqlens"),
        (dict(cu_seqlens=torch.tensor([0, 2, 5])), "cu_seqlens"),
        (dict(cu_seqlens=torch.tensor([1, 2, 6])), "cu_seqlens"),
        (dict(cu_seqlens=torch.tensor([0.0, 6.0])), "cu_seqlens"),
        (dict(x=torch.zeros(2, 6, 4, dtype=F64), cu_seqlens=torch.tensor([0, 6])), "cu_seqlens"),
        (dict(cu_seqlens=torch.tensor([0, 3, 6]), initial_state=torch.zeros(1, 4, 3, dtype=F64)), "initial_state"),
        (dict(bias=torch.zeros(4, dtype=F64, device="meta")), "device"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(overrides, argument):
    with pytest.raises(ValueError, match=argument):
        _bad(**overrides)()
