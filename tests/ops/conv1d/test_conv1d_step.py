"""causal_conv1d_step, applied token by token, against the full-sequence causal_conv1d."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.ops.conv1d import causal_conv1d, causal_conv1d_step
from tests.compare import assert_close


def _step_through(x, weight, bias, activation, state):
    """Runs the step over every token of x (batch, seqlen, dim); returns outputs and the state it advanced."""
    outs = [causal_conv1d_step(state, x[:, t], weight, bias, activation=activation) for t in range(x.shape[1])]
    return torch.stack(outs, dim=1), state


@pytest.mark.parametrize("seqlen", [1, 3, 15])
@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_state", [False, True])
def test_step_token_by_token_equals_full_conv_outputs_and_final_state(seqlen, width, activation, with_state):
    g = torch.Generator().manual_seed(seqlen * 10 + width)
    x = torch.randn(2, seqlen, 5, generator=g, dtype=torch.float64)
    weight = torch.randn(5, width, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, 5, width, generator=g, dtype=torch.float64) if with_state else None
    full, full_final = causal_conv1d(
        x, weight, bias, activation=activation, initial_state=h0, return_final_state=True
    )
    state = h0.clone() if with_state else torch.zeros(2, 5, width, dtype=torch.float64)
    stepped, final = _step_through(x, weight, bias, activation, state)
    assert_close(stepped, full)
    assert_close(final, full_final, name="final_state")


def test_step_updates_the_state_in_place_and_keeps_its_storage():
    state = torch.zeros(1, 3, 4)
    ptr = state.data_ptr()
    for t in range(1, 6):
        causal_conv1d_step(state, torch.full((1, 3), float(t)), torch.ones(3, 4))
    assert state.data_ptr() == ptr
    want = torch.tensor([2.0, 3.0, 4.0, 5.0]).expand(1, 3, 4)
    assert_close(state, want, tol=(0.0, 0.0))  # exact: the state only moves values, it never rounds them


def test_step_in_float32_matches_float64_full_conv():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 12, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(8, 4, generator=g, dtype=torch.float64)
    bias = torch.randn(8, generator=g, dtype=torch.float64)
    full = causal_conv1d(x, weight, bias, activation="silu")
    state = torch.zeros(3, 8, 4)
    stepped, _ = _step_through(x.float(), weight.float(), bias.float(), "silu", state)
    assert stepped.dtype == torch.float32
    assert_close(stepped, full, torch.float32)


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 3), seqlen=st.integers(1, 9), dim=st.integers(1, 6), width=st.integers(1, 5))
def test_step_equals_full_conv_for_awkward_shapes(batch, seqlen, dim, width):
    x = torch.randn(batch, seqlen, dim, dtype=torch.float64)
    weight = torch.randn(dim, width, dtype=torch.float64)
    h0 = torch.randn(batch, dim, width, dtype=torch.float64)
    full, full_final = causal_conv1d(x, weight, initial_state=h0, return_final_state=True)
    stepped, final = _step_through(x, weight, None, None, h0.clone())
    assert_close(stepped, full)
    assert_close(final, full_final, name="final_state")


@pytest.mark.parametrize(
    "state_shape, x_shape, weight_shape, argument",
    [
        ((2, 4), (2, 4), (4, 3), "conv_state"),
        ((2, 4, 3), (2, 5), (4, 3), "x"),
        ((2, 4, 3), (2, 1, 4), (4, 3), "x"),
        ((2, 4, 3), (2, 4), (4, 4), "weight"),
        ((2, 4, 3), (2, 4), (5, 3), "weight"),
    ],
)
def test_step_bad_shapes_raise_value_error_naming_the_argument(state_shape, x_shape, weight_shape, argument):
    with pytest.raises(ValueError, match=argument):
        causal_conv1d_step(torch.zeros(state_shape), torch.zeros(x_shape), torch.zeros(weight_shape))


def test_step_rejects_unknown_activation_impl_and_mixed_devices():
    state, x, weight = torch.zeros(1, 2, 3), torch.zeros(1, 2), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_step(state, x, weight, activation="gelu")
    with pytest.raises(ValueError, match="impl"):
        causal_conv1d_step(state, x, weight, impl="fast")
    with pytest.raises(ValueError, match="device"):
        causal_conv1d_step(state, x, weight, torch.zeros(2, device="meta"))


@pytest.mark.gpu
def test_step_on_cuda_equals_full_conv_on_cuda():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 40, 64, generator=g).cuda()
    weight, bias = torch.randn(64, 4, generator=g).cuda(), torch.randn(64, generator=g).cuda()
    full, full_final = causal_conv1d(x, weight, bias, activation="silu", return_final_state=True)
    stepped, final = _step_through(x, weight, bias, "silu", torch.zeros(2, 64, 4, device="cuda"))
    assert_close(stepped, full)
    assert_close(final, full_final, name="final_state")
