"""Each discretization method against a closed form; diagonal and dense forms agree on diagonal matrices."""

from __future__ import annotations

import cmath

import pytest
import torch

from ssmkit.ops.s4 import discretize, hippo_legs
from tests.compare import assert_close

F64 = torch.float64


def _pairs(t: torch.Tensor) -> torch.Tensor:
    """Real and imaginary parts as a trailing dim of 2, so complex results compare with the float64 tolerances."""
    return torch.view_as_real(t.to(torch.complex128))


def _scalar_expected(a: complex, b: complex, dt: float, method: str) -> tuple[complex, complex]:
    if method == "zoh":
        return cmath.exp(dt * a), (cmath.exp(dt * a) - 1) / a * b
    if method == "bilinear":
        return (1 + dt * a / 2) / (1 - dt * a / 2), dt * b / (1 - dt * a / 2)
    return 1 + dt * a, dt * b


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
@pytest.mark.parametrize("a", [-0.7, -3.0 + 2.5j])
def test_scalar_system_matches_the_exact_formula(method, a):
    b, dt = 1.3 - 0.2j if isinstance(a, complex) else 1.3, 0.1
    dtype = torch.complex128 if isinstance(a, complex) else F64
    Abar, Bbar = discretize(torch.tensor([a], dtype=dtype), torch.tensor([b], dtype=dtype), dt, method)
    a_exp, b_exp = _scalar_expected(a, b, dt, method)
    expected_A, expected_B = (torch.tensor([v], dtype=torch.complex128) for v in (a_exp, b_exp))
    assert_close(_pairs(Abar), _pairs(expected_A), F64, name="Abar")
    assert_close(_pairs(Bbar), _pairs(expected_B), F64, name="Bbar")
    Abar_dense, Bbar_dense = discretize(torch.tensor([[a]], dtype=dtype), torch.tensor([b], dtype=dtype), dt, method)
    assert_close(_pairs(Abar_dense.reshape(1)), _pairs(expected_A), F64, name="dense Abar")
    assert_close(_pairs(Bbar_dense), _pairs(expected_B), F64, name="dense Bbar")


def test_dense_zoh_matches_matrix_exp_and_the_inverse_formula_on_hippo():
    A, B = hippo_legs(8)
    dt = torch.tensor([0.01, 0.1, 0.5], dtype=F64)
    Abar, Bbar = discretize(A, B, dt, "zoh")
    assert Abar.shape == (3, 8, 8) and Bbar.shape == (3, 8)
    for h in range(3):
        expected_A = torch.linalg.matrix_exp(dt[h] * A)
        assert_close(Abar[h], expected_A, name=f"Abar[{h}]")
        # Bbar = A^-1 (exp(dt A) - I) B; A is lower triangular with a nonzero diagonal, so invertible.
        assert_close(Bbar[h], torch.linalg.solve(A, (expected_A - torch.eye(8, dtype=F64)) @ B), name=f"Bbar[{h}]")


def test_dense_zoh_matches_the_eigendecomposition_for_a_symmetric_matrix():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(6, 6, generator=g, dtype=F64)
    A = -(M @ M.T) / 6 - 0.1 * torch.eye(6, dtype=F64)  # symmetric negative definite
    B = torch.randn(6, generator=g, dtype=F64)
    lam, Q = torch.linalg.eigh(A)
    dt = 0.2
    Abar, Bbar = discretize(A, B, dt, "zoh")
    assert_close(Abar, Q @ torch.diag(torch.exp(dt * lam)) @ Q.T, name="Abar")
    assert_close(Bbar, Q @ (torch.expm1(dt * lam) / lam * (Q.T @ B)), name="Bbar")


def test_dense_bilinear_satisfies_its_defining_equations():
    A, B = hippo_legs(6)
    dt = 0.05
    Abar, Bbar = discretize(A, B, dt, "bilinear")
    eye = torch.eye(6, dtype=F64)
    assert_close((eye - dt / 2 * A) @ Abar, eye + dt / 2 * A, name="(I - dt/2 A) Abar")
    assert_close((eye - dt / 2 * A) @ Bbar, dt * B, name="(I - dt/2 A) Bbar")


def test_dense_euler_is_identity_plus_dt_A():
    A, B = hippo_legs(5)
    Abar, Bbar = discretize(A, B, 0.02, "euler")
    assert_close(Abar, torch.eye(5, dtype=F64) + 0.02 * A, name="Abar")
    assert_close(Bbar, 0.02 * B, name="Bbar")


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
def test_diagonal_and_dense_discretizations_agree_on_a_diagonal_matrix(method):
    g = torch.Generator().manual_seed(1)
    a = -torch.exp(torch.randn(4, 5, generator=g, dtype=F64))  # (H, N)
    b = torch.randn(4, 5, generator=g, dtype=F64)
    dt = torch.tensor([0.01, 0.05, 0.2, 1.0], dtype=F64)
    Abar, Bbar = discretize(a, b, dt, method)
    Abar_dense, Bbar_dense = discretize(torch.diag_embed(a), b, dt, method)
    assert_close(Abar_dense, torch.diag_embed(Abar), name="Abar")
    assert_close(Bbar_dense, Bbar, name="Bbar")


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
def test_a_channel_vector_of_dt_equals_one_call_per_channel(method):
    a = torch.complex(-torch.rand(6, dtype=F64) - 0.1, torch.arange(6, dtype=F64))
    b = torch.ones(6, dtype=torch.complex128)
    dt = torch.tensor([0.01, 0.1, 0.3], dtype=F64)
    Abar, Bbar = discretize(a, b, dt, method)
    assert Abar.shape == Bbar.shape == (3, 6)
    for h in range(3):
        Abar_h, Bbar_h = discretize(a, b, dt[h].item(), method)
        assert_close(_pairs(Abar[h]), _pairs(Abar_h), F64, name="Abar")
        assert_close(_pairs(Bbar[h]), _pairs(Bbar_h), F64, name="Bbar")


@pytest.mark.parametrize(
    "A, B, dt, method, match",
    [
        (-torch.ones(4), torch.ones(4), 0.1, "rk4", "^method: expected one of"),
        (-torch.ones(4), torch.ones(3), 0.1, "zoh", "^A: expected shape"),
        (-torch.ones(2, 3, 3, 3), torch.ones(3), 0.1, "zoh", "^A: expected"),
        (-torch.ones(3, 4), torch.ones(3), 0.1, "zoh", r"^A: expected shape \(3, 3\)"),
        (-torch.ones(4), torch.ones(4, 1, 1), 0.1, "zoh", r"^B: expected shape \(N,\) or \(H, N\)"),
        (-torch.ones(2, 4), torch.ones(2, 4), torch.ones(3), "zoh", "^dt: expected a real scalar or \\(H,\\) with H=2"),
        (-torch.ones(4), torch.ones(4), torch.ones(2, 2), "zoh", "^dt: expected"),
        (-torch.ones(4), torch.ones(4), 0.0, "zoh", "^dt: expected all entries > 0"),
        (torch.tensor([-1.0, 0.0]), torch.ones(2), 0.1, "zoh", "^A: expected nonzero"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(A, B, dt, method, match):
    with pytest.raises(ValueError, match=match):
        discretize(A, B, dt, method)
