"""The convolution kernel and FFT convolution against closed forms, direct convolution and the recurrence."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.ops.s4 import fft_conv, s4_recurrent, ssm_kernel
from tests.compare import assert_close

from .systems import KINDS, make_system

F64 = torch.float64


def _direct_conv(u, K, D=None):
    """y[b, t, h] = sum_{s<=t} K[h, s] u[b, t-s, h] through an explicit Toeplitz matrix. K (H, Lk)."""
    L = u.shape[1]
    K = torch.nn.functional.pad(K, (0, max(0, L - K.shape[-1])))[:, :L]
    t = torch.arange(L)
    lag = t[:, None] - t[None, :]  # (L, L): t - s
    toeplitz = torch.where(lag >= 0, K[:, lag.clamp(min=0)], torch.zeros((), dtype=K.dtype))  # (H, L, L)
    y = torch.einsum("hts,bsh->bth", toeplitz, u)
    return y if D is None else y + D * u


def _brute_kernel(Abar, Bbar, C, L):
    """K[h, l] = Re(C_h Abar_h^l Bbar_h) with matrix powers, one channel and one l at a time. Dense Abar (H, N, N)."""
    H = Bbar.shape[0]
    K = torch.zeros(H, L, dtype=F64)
    for h in range(H):
        for l in range(L):
            K[h, l] = (C[h] @ torch.linalg.matrix_power(Abar[h], l).to(C.dtype) @ Bbar[h].to(C.dtype)).real
    return K


def test_scalar_kernel_is_c_b_a_to_the_l():
    a, b, c, L = -0.9, 0.4, 2.5, 30
    K = ssm_kernel(torch.tensor([a], dtype=F64), torch.tensor([b], dtype=F64), torch.tensor([c], dtype=F64), L)
    assert_close(K, torch.tensor([c * b * a**l for l in range(L)], dtype=F64), name="K")


def test_complex_scalar_kernel_is_the_real_part_of_c_b_a_to_the_l():
    a, b, c, L = 0.9 * complex(0.8, 0.6), complex(0.3, -1.0), complex(-0.5, 2.0), 25
    Abar, Bbar, C = (torch.tensor([v], dtype=torch.complex128) for v in (a, b, c))
    K = ssm_kernel(Abar, Bbar, C, L)
    assert K.dtype == F64
    assert_close(K, torch.tensor([(c * b * a**l).real for l in range(L)], dtype=F64), name="K")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("L", [1, 37, 64])
def test_kernel_equals_matrix_powers(kind, L):
    Abar, Bbar, C, _ = make_system(kind, 3, 5, seed=L)
    dense_Abar = Abar if kind == "dense" else torch.diag_embed(Abar)
    assert_close(ssm_kernel(Abar, Bbar, C, L), _brute_kernel(dense_Abar, Bbar, C, L), name="K")


def test_diagonal_kernel_equals_dense_kernel_of_the_diagonal_matrix():
    Abar, Bbar, C, _ = make_system("diag_real", 4, 6, seed=3)
    assert_close(ssm_kernel(torch.diag_embed(Abar), Bbar, C, 50), ssm_kernel(Abar, Bbar, C, 50), name="K")


def test_kernel_broadcasts_a_shared_system_over_channels_of_C():
    Abar, Bbar, C, _ = make_system("dense", 1, 4, seed=2)
    C3 = torch.randn(3, 4, dtype=F64)
    K = ssm_kernel(Abar[0], Bbar[0], C3, 20)
    assert K.shape == (3, 20)
    for h in range(3):
        assert_close(K[h], ssm_kernel(Abar[0], Bbar[0], C3[h], 20), name=f"K[{h}]")


@pytest.mark.parametrize("L, Lk", [(1, 1), (2, 2), (15, 15), (64, 64), (33, 50), (40, 7)])
def test_fft_conv_equals_direct_convolution(L, Lk):
    g = torch.Generator().manual_seed(L)
    u = torch.randn(2, L, 3, generator=g, dtype=F64)
    K = torch.randn(3, Lk, generator=g, dtype=F64)
    D = torch.randn(3, generator=g, dtype=F64)
    assert_close(fft_conv(u, K, D), _direct_conv(u, K, D), name="y")


def test_fft_conv_with_a_shared_1d_kernel_equals_per_channel_copies():
    u = torch.randn(3, 20, 4, dtype=F64)
    K = torch.randn(20, dtype=F64)
    assert_close(fft_conv(u, K), fft_conv(u, K.expand(4, 20)), name="y")


def test_fft_conv_in_float32_is_within_float32_tolerance_of_float64():
    u, K = torch.randn(2, 300, 4, dtype=F64), torch.randn(4, 300, dtype=F64) / 10
    y = fft_conv(u.float(), K.float())
    assert y.dtype == torch.float32
    assert_close(y, _direct_conv(u.float().double(), K.float().double()), name="y")


def test_fft_conv_in_bfloat16_returns_bfloat16():
    u, K = torch.randn(1, 40, 2).bfloat16(), torch.randn(2, 40).bfloat16() / 10
    y = fft_conv(u, K)
    assert y.dtype == torch.bfloat16
    assert_close(y, _direct_conv(u.double(), K.double()), name="y")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
@pytest.mark.parametrize("L", [1, 63, 200])
def test_convolution_with_the_kernel_equals_the_recurrence(kind, method, L):
    Abar, Bbar, C, D = make_system(kind, 3, 8, seed=L, method=method)
    u = torch.randn(2, L, 3, dtype=F64, generator=torch.Generator().manual_seed(L))
    y_rec = s4_recurrent(u, Abar, Bbar, C, D)
    K = ssm_kernel(Abar, Bbar, C, L)
    assert_close(fft_conv(u, K, D), y_rec, name="fft conv")
    assert_close(_direct_conv(u, K, D), y_rec, name="direct conv")


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 3), L=st.integers(1, 80), H=st.integers(1, 4), N=st.integers(1, 6),
       kind=st.sampled_from(KINDS), seed=st.integers(0, 2**16))
def test_convolution_equals_recurrence_on_awkward_shapes(batch, L, H, N, kind, seed):
    Abar, Bbar, C, D = make_system(kind, H, N, seed=seed)
    u = torch.randn(batch, L, H, dtype=F64, generator=torch.Generator().manual_seed(seed))
    assert_close(fft_conv(u, ssm_kernel(Abar, Bbar, C, L), D), s4_recurrent(u, Abar, Bbar, C, D), name="y")


@pytest.mark.parametrize(
    "args, match",
    [
        ((-torch.ones(3), torch.ones(3), torch.ones(3), 0), "^L: expected an int >= 1"),
        ((-torch.ones(3), torch.ones(3), torch.ones(4), 5), r"^C: expected shape \(N,\) or \(H, N\) with N=3"),
        ((-torch.ones(2, 3), torch.ones(2, 3), torch.ones(5, 3), 5), "^C: expected .*H=2"),
        ((-torch.ones(3), torch.ones(1, 2, 3), torch.ones(3), 5), "^Bbar: expected shape"),
        ((-torch.ones(2, 4, 3), torch.ones(2, 3), torch.ones(3), 5), r"^Abar: expected shape \(2, 3, 3\)"),
    ],
)
def test_ssm_kernel_rejects_bad_input_naming_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        ssm_kernel(*args)


@pytest.mark.parametrize(
    "u, K, D, match",
    [
        (torch.ones(5, 3), torch.ones(3, 5), None, "^u: expected 3 dims"),
        (torch.ones(1, 5, 3), torch.ones(2, 5), None, r"^K: expected shape \(3, Lk\)"),
        (torch.ones(1, 5, 3), torch.ones(3, 5, dtype=torch.complex64), None, "^K: expected a floating-point"),
        (torch.ones(1, 5, 3), torch.ones(3, 5), torch.ones(2), "^D: expected shape"),
        (torch.ones(1, 5, 3, dtype=torch.int64), torch.ones(3, 5), None, "^u: expected a floating-point dtype"),
    ],
)
def test_fft_conv_rejects_bad_input_naming_the_argument(u, K, D, match):
    with pytest.raises(ValueError, match=match):
        fft_conv(u, K, D)
