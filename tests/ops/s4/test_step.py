"""s4_step token by token, and prefill plus decode, must reproduce s4_recurrent; input checks of both."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.s4 import s4_recurrent, s4_step
from tests.compare import assert_close

from .systems import KINDS, make_system

F64 = torch.float64


def _pairs(t):
    return torch.view_as_real(t) if t.is_complex() else t


def _initial_state(kind, batch, H, N):
    g = torch.Generator().manual_seed(5)
    h = torch.randn(batch, H, N, generator=g, dtype=F64)
    return torch.complex(h, torch.randn(batch, H, N, generator=g, dtype=F64)) if kind == "diag_complex" else h


@pytest.mark.parametrize("kind", KINDS)
def test_step_token_by_token_matches_recurrent_outputs_and_final_state(kind):
    Abar, Bbar, C, D = make_system(kind, 3, 6, seed=1)
    u = torch.randn(2, 17, 3, dtype=F64)
    h0 = _initial_state(kind, 2, 3, 6)
    y_ref, h_ref = s4_recurrent(u, Abar, Bbar, C, D, initial_state=h0, return_final_state=True)
    state = h0.clone()
    y = torch.stack([s4_step(state, u[:, t], Abar, Bbar, C, D) for t in range(17)], dim=1)
    assert_close(y, y_ref, name="y")
    assert_close(_pairs(state), _pairs(h_ref), name="final_state")


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_decode_matches_one_recurrent_pass(kind):
    Abar, Bbar, C, D = make_system(kind, 2, 4, seed=2)
    u = torch.randn(1, 25, 2, dtype=F64)
    y_ref, h_ref = s4_recurrent(u, Abar, Bbar, C, D, return_final_state=True)
    y_prefill, state = s4_recurrent(u[:, :18], Abar, Bbar, C, D, return_final_state=True)
    y_decode = [s4_step(state, u[:, t], Abar, Bbar, C, D) for t in range(18, 25)]
    assert_close(torch.cat([y_prefill, torch.stack(y_decode, dim=1)], dim=1), y_ref, name="y")
    assert_close(_pairs(state), _pairs(h_ref), name="final_state")


def test_recurrent_of_a_scalar_system_is_the_geometric_sum():
    # Constant input 1 into h_t = a h_{t-1} + b: y_t = c b (1 - a^(t+1)) / (1 - a) + d.
    a, b, c, d, L = 0.8, 0.5, -1.5, 0.25, 20
    y = s4_recurrent(torch.ones(1, L, 1, dtype=F64), torch.tensor([a], dtype=F64), torch.tensor([b], dtype=F64),
                     torch.tensor([c], dtype=F64), torch.tensor([d], dtype=F64))
    expected = torch.tensor([c * b * (1 - a ** (t + 1)) / (1 - a) + d for t in range(L)], dtype=F64)
    assert_close(y.view(L), expected, name="y")


def test_step_updates_the_state_in_place():
    Abar, Bbar, C, _ = make_system("diag_complex", 2, 3)
    state = torch.zeros(1, 2, 3, dtype=torch.complex128)
    pointer = state.data_ptr()
    s4_step(state, torch.ones(1, 2, dtype=F64), Abar, Bbar, C)
    assert state.data_ptr() == pointer
    assert_close(_pairs(state), _pairs(Bbar.expand(1, 2, 3)), name="state after one step from zero")


def test_recurrent_in_bfloat16_computes_in_float32_and_returns_bfloat16():
    Abar, Bbar, C, D = make_system("dense", 2, 4)
    u = torch.randn(1, 12, 2).bfloat16()
    y = s4_recurrent(u, Abar, Bbar, C, D)
    assert y.dtype == torch.bfloat16
    assert_close(y, s4_recurrent(u.double(), Abar, Bbar, C, D), name="y")


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"u": torch.ones(2, 3)}, "^u: expected 3 dims"),
        ({"Abar": -torch.ones(4, 6)}, "^Abar: expected shape"),
        ({"C": torch.ones(3, 5)}, "^C: expected shape"),
        ({"D": torch.ones(2)}, "^D: expected shape"),
        ({"initial_state": torch.ones(2, 3, 5, dtype=torch.complex128)}, r"^initial_state: expected shape \(2, 3, 6\)"),
        ({"initial_state": torch.ones(2, 3, 6, dtype=F64)}, "^initial_state: expected a complex dtype"),
        ({"D": torch.ones(3, device="meta")}, "one device.*D on meta"),
    ],
)
def test_recurrent_rejects_bad_input_naming_the_argument(changes, match):
    Abar, Bbar, C, D = make_system("diag_complex", 3, 6)
    call = dict(u=torch.ones(2, 4, 3, dtype=F64), Abar=Abar, Bbar=Bbar, C=C, D=D, initial_state=None)
    call.update(changes)
    with pytest.raises(ValueError, match=match):
        s4_recurrent(**call)


def test_recurrent_rejects_systems_with_a_channel_count_other_than_u():
    Abar, Bbar, C, D = make_system("dense", 4, 3)
    with pytest.raises(ValueError, match="^Abar: expected channel dim H=2"):
        s4_recurrent(torch.ones(1, 5, 2, dtype=F64), Abar, Bbar, C)


@pytest.mark.parametrize(
    "state, u, match",
    [
        (torch.zeros(1, 2, 4), torch.ones(1, 2), r"^state: expected shape \(1, 2, 3\)"),
        (torch.zeros(1, 2, 3), torch.ones(1, 1, 2), "^u: expected 2 dims"),
    ],
)
def test_step_rejects_bad_input_naming_the_argument(state, u, match):
    Abar, Bbar, C, _ = make_system("diag_real", 2, 3)
    with pytest.raises(ValueError, match=match):
        s4_step(state, u, Abar, Bbar, C)
