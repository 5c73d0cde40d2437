"""The reference scan against closed forms: a geometric sum, the unrolled sum, and the group mapping."""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.ops.selective_scan import selective_scan
from tests.compare import assert_close

from .inputs import make_inputs

F64 = torch.float64


def _full(value, *shape):
    return torch.full(shape, value, dtype=F64)


@pytest.mark.parametrize("impl", ["reference", "parallel"])
def test_constant_decay_and_input_give_a_geometric_sum(impl):
    # One channel, one state, everything constant: with a = exp(dt A) and b = dt B x,
    # h_t = a^(t+1) h0 + b (1 - a^(t+1)) / (1 - a), and out_t = (C h_t + D x) silu(z).
    T, A, raw_dt, bias, B, C, x, D, z, h0 = 40, -0.8, -2.5, 0.3, 1.3, -0.4, 0.7, 0.25, 0.9, 0.6
    dt = math.log1p(math.exp(raw_dt + bias))
    a, b = math.exp(dt * A), dt * B * x
    silu_z = z / (1 + math.exp(-z))
    h = [a ** (t + 1) * h0 + b * (1 - a ** (t + 1)) / (1 - a) for t in range(T)]
    expected = torch.tensor([(C * ht + D * x) * silu_z for ht in h], dtype=F64).view(1, T, 1)

    y, h_T = selective_scan(
        _full(x, 1, T, 1), _full(raw_dt, 1, T, 1), _full(A, 1, 1), _full(B, 1, T, 1, 1), _full(C, 1, T, 1, 1),
        D=_full(D, 1), z=_full(z, 1, T, 1), dt_bias=_full(bias, 1), dt_softplus=True,
        initial_state=_full(h0, 1, 1, 1),
        return_final_state=True, impl=impl,
    )
    assert_close(y, expected, name="y")
    assert_close(h_T, torch.tensor(h[-1], dtype=F64).view(1, 1, 1), name="final_state")


@pytest.mark.parametrize("impl", ["reference", "parallel"])
def test_states_equal_the_unrolled_sum_over_past_inputs(impl):
    # h_t = sum_{s<=t} exp(A sum_{k=s+1..t} dt_k) dt_s B_s x_s, evaluated term by term in Python floats.
    (x, dt, A, B, C), _ = make_inputs(1, 12, 3, 2, 1, seed=7, dt_softplus=False)
    y, h_T = selective_scan(x, dt, A, B, C, impl=impl, return_final_state=True)
    T, dim, dstate = 12, 3, 2
    expected = torch.zeros(1, T, dim, dtype=F64)
    h_last = torch.zeros(1, dim, dstate, dtype=F64)
    for t in range(T):
        for d in range(dim):
            for n in range(dstate):
                h = sum(
                    math.exp(A[d, n].item() * dt[0, s + 1:t + 1, d].sum().item())
                    * dt[0, s, d].item() * B[0, s, 0, n].item() * x[0, s, d].item()
                    for s in range(t + 1)
                )
                expected[0, t, d] += C[0, t, 0, n].item() * h
                if t == T - 1:
                    h_last[0, d, n] = h
    assert_close(y, expected, name="y")
    assert_close(h_T, h_last, name="final_state")


@pytest.mark.parametrize("impl", ["reference", "parallel"])
def test_channel_d_reads_group_d_over_channels_per_group(impl):
    # dim 6, ngroups 3: channels 0-1 read group 0, 2-3 group 1, 4-5 group 2. Give group g the input scale g, so
    # every channel's state is g times a geometric sum (x = 1, B = g, C = 1, constant dt).
    T, dim, A, dt = 9, 6, -1.0, 0.1
    a = math.exp(dt * A)
    B = torch.arange(3, dtype=F64).view(1, 1, 3, 1).expand(1, T, 3, 1)
    y = selective_scan(torch.ones(1, T, dim, dtype=F64), torch.full((1, T, dim), dt, dtype=F64),
                       torch.full((dim, 1), A, dtype=F64), B, torch.ones(1, T, 3, 1, dtype=F64), impl=impl)
    geometric = torch.tensor([dt * (1 - a ** (t + 1)) / (1 - a) for t in range(T)], dtype=F64)
    expected = geometric.view(1, T, 1) * torch.tensor([0, 0, 1, 1, 2, 2], dtype=F64)
    assert_close(y, expected, name="y")


def test_reference_low_precision_returns_input_dtype_and_float32_state():
    args, kwargs = make_inputs(1, 10, 4, 2, 1, torch.bfloat16, seed=2)
    y, h = selective_scan(*args, **kwargs, impl="reference", return_final_state=True)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
