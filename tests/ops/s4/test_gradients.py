"""Gradients: the convolution path matches the recurrence for every input, and gradcheck holds end to end."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.s4 import discretize, fft_conv, s4_recurrent, ssm_kernel
from tests.compare import assert_close

from .systems import KINDS, make_system

F64 = torch.float64


def _pairs(t):
    return torch.view_as_real(t) if t.is_complex() else t


@pytest.mark.parametrize("kind", KINDS)
def test_convolution_gradients_match_recurrence_gradients_for_every_input(kind):
    Abar, Bbar, C, D = make_system(kind, 3, 5, seed=4)
    u = torch.randn(2, 40, 3, dtype=F64)
    weight = torch.randn(2, 40, 3, dtype=F64)

    def grads(form):
        leaves = [t.clone().requires_grad_() for t in (u, Abar, Bbar, C, D)]
        y = form(*leaves)
        return torch.autograd.grad((y * weight).sum(), leaves)

    def conv(u, Abar, Bbar, C, D):
        return fft_conv(u, ssm_kernel(Abar, Bbar, C, u.shape[1]), D)

    for name, g_conv, g_rec in zip(("u", "Abar", "Bbar", "C", "D"), grads(conv), grads(s4_recurrent)):
        assert_close(_pairs(g_conv), _pairs(g_rec), grad=True, name=f"d{name}")


@pytest.mark.parametrize("kind", ["diag_complex", "dense"])
@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_gradcheck_from_continuous_parameters_through_the_fft_convolution(kind, method):
    g = torch.Generator().manual_seed(0)
    H, N, L = 2, 3, 6
    if kind == "diag_complex":
        # S4D parametrization: A = -exp(log_a_real) + i a_imag, all real leaves so gradcheck sees real inputs.
        params = [torch.randn(H, N, generator=g, dtype=F64), torch.randn(H, N, generator=g, dtype=F64)]
    else:
        M = torch.randn(N, N, generator=g, dtype=F64)
        params = [-(M @ M.T) / N - torch.eye(N, dtype=F64)]
    rest = [torch.randn(H, N, generator=g, dtype=F64), torch.randn(H, N, generator=g, dtype=F64),
            torch.rand(H, generator=g, dtype=F64) * 0.1 + 0.01, torch.randn(1, L, H, generator=g, dtype=F64)]
    leaves = [t.requires_grad_() for t in params + rest]

    def fn(*ts):
        *a, B, C, dt, u = ts
        if kind == "diag_complex":
            A, B, C = torch.complex(-torch.exp(a[0]), a[1]), B.to(torch.complex128), C.to(torch.complex128)
        else:
            A = a[0].expand(H, N, N)
        Abar, Bbar = discretize(A, B, dt, method)
        return fft_conv(u, ssm_kernel(Abar, Bbar, C, L))

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)
