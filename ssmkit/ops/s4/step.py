"""One step of a discrete LTI system, h_t = Abar h_{t-1} + Bbar u_t, y_t = Re(C h_t) + D u_t (S4, section 2.3).

`recurrence_step` is the one-step math, shared by the recurrent reference and `s4_step` (decoding in place).
"""

from __future__ import annotations

import torch

from ssmkit.ops.validate import check_same_device, check_tensor

from .system import cast, check_real_or_complex, check_system, compute_dtypes


def recurrence_step(h, u, Abar, Bbar, C, dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """h (batch, H, N); u (batch, H) real; Abar (H, N) or (H, N, N); Bbar, C (H, N).

    Returns (h_t (batch, H, N), y_t (batch, H) real, without D). h is not modified.
    """
    if dense:
        h = torch.einsum("hnm,bhm->bhn", Abar, h) + Bbar * u[..., None]
    else:
        h = Abar * h + Bbar * u[..., None]
    y = (C * h).sum(-1)
    return h, (y.real if y.is_complex() else y)


def prepare_system(u_dtype, H: int, Abar, Bbar, C, dense: bool):
    """Casts to the compute dtypes of u and expands every channel dim to H.

    Returns (Abar (H, N) or (H, N, N), Bbar (H, N), C (H, N), state dtype).
    """
    real, cplx = compute_dtypes(u_dtype)
    state_dtype = cplx if (Abar.is_complex() or Bbar.is_complex()) else real
    N = Bbar.shape[-1]
    Abar = Abar.to(state_dtype).expand((H, N, N) if dense else (H, N))
    return Abar, Bbar.to(state_dtype).expand(H, N), cast(C, real, cplx).expand(H, N), state_dtype


def check_inputs(u, Abar, Bbar, C, D, state, state_name: str) -> bool:
    """Shared checks of s4_recurrent (u (batch, L, H)) and s4_step (u (batch, H)); returns `dense`."""
    if not u.is_floating_point():
        raise ValueError(f"u: expected a floating-point dtype, got {u.dtype}")
    dense, lead, N = check_system(Abar, Bbar, C, names=("Abar", "Bbar", "C"))
    batch, H = u.shape[0], u.shape[-1]
    if lead and lead[0] != H:
        raise ValueError(f"Abar: expected channel dim H={H} from u's last dim, got {lead[0]}")
    if D is not None:
        check_tensor("D", D, shape=(H,))
    if state is not None:
        check_real_or_complex(state_name, state, shape=(batch, H, N))
        if (Abar.is_complex() or Bbar.is_complex()) and not state.is_complex():
            raise ValueError(f"{state_name}: expected a complex dtype for a complex system, got {state.dtype}")
    check_same_device(u=u, Abar=Abar, Bbar=Bbar, C=C, D=D, **{state_name: state})
    return dense


def s4_step(state, u, Abar, Bbar, C, D=None) -> torch.Tensor:
    """Decodes one token: updates `state` in place and returns y.

    state (batch, H, N), complex for a complex system; u (batch, H); Abar, Bbar, C as in `s4_recurrent`;
    D (H,). Returns y (batch, H) in u.dtype. Only shapes are checked, so the call never synchronizes.
    """
    check_tensor("u", u, ndim=2)
    dense = check_inputs(u, Abar, Bbar, C, D, state, "state")
    real, _ = compute_dtypes(u.dtype)
    Abar, Bbar, C, state_dtype = prepare_system(u.dtype, u.shape[1], Abar, Bbar, C, dense)
    h, y = recurrence_step(state.to(state_dtype), u.to(real), Abar, Bbar, C, dense)
    state.copy_(h)
    if D is not None:
        y = y + D.to(real) * u.to(real)
    return y.to(u.dtype)
