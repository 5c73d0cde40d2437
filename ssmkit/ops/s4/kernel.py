"""The convolution view of a discrete LTI system (Gu et al. 2022, "S4", section 2.4): y = K * u + D u.

K_l = C Abar^l Bbar; a diagonal Abar gives a Vandermonde product, a dense one repeated squaring. The causal
convolution runs through rfft with n = 2L, so the circular wrap-around lands in the discarded half.
"""

from __future__ import annotations

import torch

from ssmkit.ops.validate import check_tensor

from .system import check_system, compute_dtypes


def ssm_kernel(Abar, Bbar, C, L: int) -> torch.Tensor:
    """K_l = Re(C Abar^l Bbar) for l = 0..L-1.

    Abar (N,) or (H, N) diagonal, (N, N) or (H, N, N) dense; Bbar (N,) or (H, N); C (N,) or (H, N).
    Returns K (H, L) when any input has a channel dim, else (L,), real. For complex systems the real part is the
    output (so a system with N/2 conjugate pairs, as S4D stores them, needs C doubled).
    """
    dense, _, _ = check_system(Abar, Bbar, C, names=("Abar", "Bbar", "C"))
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"L: expected an int >= 1, got {L!r}")
    common = torch.promote_types(Abar.dtype, Bbar.dtype)
    Abar, Bbar = Abar.to(common), Bbar.to(common)
    if dense:
        # Columns Abar^l Bbar for l < 2^k, doubled each round by multiplying with Abar^(2^k).
        V = Bbar[..., :, None]  # (..., N, 1)
        power = Abar
        while V.shape[-1] < L:
            V = torch.cat([V, power @ V], dim=-1)
            power = power @ power
        K = (C[..., :, None] * V[..., :L]).sum(-2)  # (..., L)
    else:
        real = Abar.real.dtype if Abar.is_complex() else Abar.dtype
        exponents = torch.arange(L, dtype=real, device=Abar.device)
        vandermonde = Abar[..., :, None] ** exponents  # (..., N, L)
        K = ((C * Bbar)[..., :, None] * vandermonde).sum(-2)
    return K.real if K.is_complex() else K


def fft_conv(u, K, D=None) -> torch.Tensor:
    """Causal convolution y_t = sum_{s<=t} K_s u_{t-s} (+ D u_t) via rfft with n = 2L.

    u (batch, L, H) real; K (H, Lk) or (Lk,) real (taps past L are ignored, missing taps are zero); D (H,).
    Returns y (batch, L, H) in u.dtype; bf16/fp16 inputs compute in float32.
    """
    check_tensor("u", u, ndim=3)
    batch, L, H = u.shape
    if not u.is_floating_point():
        raise ValueError(f"u: expected a floating-point dtype, got {u.dtype}")
    check_tensor("K", K)
    if K.ndim not in (1, 2) or (K.ndim == 2 and K.shape[0] != H):
        raise ValueError(f"K: expected shape ({H}, Lk) or (Lk,), got {tuple(K.shape)}")
    if D is not None:
        check_tensor("D", D, shape=(H,))
    real, _ = compute_dtypes(u.dtype)
    n = 2 * L
    u_f = torch.fft.rfft(u.to(real), n=n, dim=1)  # (batch, n//2+1, H)
    K_f = torch.fft.rfft(K[..., :L].to(real), n=n, dim=-1)  # (H, n//2+1) or (n//2+1,)
    K_f = K_f.transpose(0, 1) if K.ndim == 2 else K_f[:, None]
    y = torch.fft.irfft(u_f * K_f, n=n, dim=1)[:, :L]
    if D is not None:
        y = y + D.to(real) * u.to(real)
    return y.to(u.dtype)
