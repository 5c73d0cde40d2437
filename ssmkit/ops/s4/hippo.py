"""HiPPO-LegS matrices (Gu et al. 2020, "HiPPO", Theorem 2; the S4 initialization, Gu et al. 2022, eq. 2).

The continuous system h' = A h + B x projects the input history onto scaled Legendre polynomials.
"""

from __future__ import annotations

import torch


def hippo_legs(N: int, dtype: torch.dtype = torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (A (N, N), B (N,)) with A_nk = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) for n = k, 0 for n < k,
    and B_n = sqrt(2n+1).
    """
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"N: expected an int >= 1, got {N!r}")
    n = torch.arange(N, dtype=torch.float64, device=device)
    q = torch.sqrt(2 * n + 1)
    A = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(n + 1)
    return A.to(dtype), q.to(dtype)
