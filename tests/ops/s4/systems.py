"""Small discrete systems of each kind (real diagonal, complex diagonal, dense HiPPO) for the S4 tests."""

from __future__ import annotations

import torch

from ssmkit.ops.s4 import discretize, hippo_legs

KINDS = ("diag_real", "diag_complex", "dense")


def make_system(kind: str, H: int, N: int, *, seed: int = 0, method: str = "zoh"):
    """Returns (Abar, Bbar, C, D) for H channels of state size N, discretized with dt in [0.01, 0.1].

    diag_real: A = -exp(N(0, 1)); diag_complex: S4D-Lin, A_n = -1/2 + i pi n; dense: HiPPO-LegS shared by all
    channels. B, C ~ N(0, 1) per channel (complex for diag_complex).
    """
    g = torch.Generator().manual_seed(seed)

    def real(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    dt = torch.exp(torch.empty(H, dtype=torch.float64).uniform_(-4.6, -2.3, generator=g))
    if kind == "diag_real":
        A, B, C = -torch.exp(real(H, N)), real(H, N), real(H, N)
    elif kind == "diag_complex":
        A = torch.complex(torch.full((H, N), -0.5, dtype=torch.float64),
                          torch.pi * torch.arange(N, dtype=torch.float64).expand(H, N))
        B, C = torch.complex(real(H, N), real(H, N)), torch.complex(real(H, N), real(H, N))
    else:
        A, B = hippo_legs(N)
        A, B, C = A.expand(H, N, N), B * real(H, N), real(H, N)
    Abar, Bbar = discretize(A, B, dt, method)
    return Abar, Bbar, C, real(H)
