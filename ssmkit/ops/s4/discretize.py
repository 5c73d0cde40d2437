"""Continuous (A, B) to discrete (Abar, Bbar) for S4-style LTI systems (Gu et al. 2022, "S4", section 2.3).

zoh: Abar = exp(dt A), Bbar = A^-1 (exp(dt A) - I) B;  bilinear: Abar = (I - dt/2 A)^-1 (I + dt/2 A),
Bbar = (I - dt/2 A)^-1 dt B;  euler (forward): Abar = I + dt A, Bbar = dt B. Diagonal and dense A.
"""

from __future__ import annotations

import torch

from .system import check_real_or_complex, check_system

METHODS = ("zoh", "bilinear", "euler")


def discretize(A, B, dt, method: str = "zoh") -> tuple[torch.Tensor, torch.Tensor]:
    """Discretizes h' = A h + B u with step dt.

    Diagonal: A (N,) or (H, N), real or complex, holding the diagonal; B with A's shape.
    Dense: A (N, N) or (H, N, N); B (N,) or (H, N) with A's leading shape.
    dt: a float, a 0-d tensor or (H,) (one step per channel); > 0.
    Returns (Abar, Bbar) shaped like (A, B) with dt's channel dim in front when dt is (H,).
    Dense zoh uses Van Loan's block exponential, exp(dt [[A, B], [0, 0]]) = [[Abar, Bbar], [0, 1]], which needs no
    inverse of A; diagonal zoh divides by A, so its entries must be nonzero.
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    dense, lead, N = check_system(A, B, names=("A", "B", "C"))
    real = A.real.dtype if A.is_complex() else A.dtype
    if not isinstance(dt, torch.Tensor):
        dt = torch.tensor(dt, dtype=real, device=A.device)
    check_real_or_complex("dt", dt)
    if dt.is_complex() or dt.ndim > 1 or (dt.ndim == 1 and lead and dt.shape[0] != lead[0]):
        want = "a real scalar or (H,)" + (f" with H={lead[0]}" if lead else "")
        raise ValueError(f"dt: expected {want}, got shape {tuple(dt.shape)} dtype {dt.dtype}")
    if not bool((dt > 0).all()):
        raise ValueError(f"dt: expected all entries > 0, got min {dt.min().item():g}")
    if method == "zoh" and not dense and not bool((A != 0).all()):
        raise ValueError("A: expected nonzero diagonal entries for zoh (it divides by A), got a zero")
    dt = dt.to(real)
    common = torch.promote_types(A.dtype, B.dtype)
    A, B = A.to(common), B.to(common)
    if dense:
        return _discretize_dense(A, B, dt, method)
    dtA, dtB = dt[..., None] * A, dt[..., None] * B
    if method == "zoh":
        return torch.exp(dtA), torch.expm1(dtA) / dtA * dtB
    if method == "bilinear":
        return (1 + dtA / 2) / (1 - dtA / 2), dtB / (1 - dtA / 2)
    return 1 + dtA, dtB


def _discretize_dense(A, B, dt, method):
    """A (..., N, N), B (..., N), dt () or (H,) -> (Abar (..., N, N), Bbar (..., N))."""
    N = A.shape[-1]
    dtA = dt[..., None, None] * A
    dtB = (dt[..., None] * B).expand(dtA.shape[:-1])
    eye = torch.eye(N, dtype=dtA.dtype, device=A.device)
    if method == "zoh":
        top = torch.cat([dtA, dtB[..., None]], dim=-1)  # (..., N, N+1)
        block = torch.cat([top, torch.zeros_like(top[..., :1, :])], dim=-2)  # (..., N+1, N+1)
        E = torch.linalg.matrix_exp(block)
        return E[..., :N, :N], E[..., :N, N]
    if method == "bilinear":
        left = eye - dtA / 2
        return torch.linalg.solve(left, eye + dtA / 2), torch.linalg.solve(left, dtB[..., None])[..., 0]
    return eye + dtA, dtB
