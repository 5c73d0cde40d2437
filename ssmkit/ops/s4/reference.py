"""The executable spec of a discrete S4-style LTI system: the recurrence, one `recurrence_step` per token.

The convolution form in kernel.py (K = (C Bbar, C Abar Bbar, ...), applied by FFT) is tested against it.
"""

from __future__ import annotations

import torch

from ssmkit.ops.validate import check_tensor

from .step import check_inputs, prepare_system, recurrence_step
from .system import compute_dtypes


def s4_recurrent(u, Abar, Bbar, C, D=None, initial_state=None, return_final_state=False):
    """Runs h_t = Abar h_{t-1} + Bbar u_t, y_t = Re(C h_t) + D u_t over the sequence, per channel.

    Glossary: u = input x of the paper, Abar, Bbar = discretized A, B; C, D as in the paper; h = state.
    u (batch, L, H) real; Abar (N,) or (H, N) diagonal, (N, N) or (H, N, N) dense, real or complex;
    Bbar (N,) or (H, N); C (N,) or (H, N); D (H,); initial_state (batch, H, N).
    Returns y (batch, L, H) in u.dtype, and with return_final_state also h_L (batch, H, N) in the compute dtype
    (complex when Abar or Bbar is). bf16/fp16 inputs compute in float32.
    """
    check_tensor("u", u, ndim=3)
    dense = check_inputs(u, Abar, Bbar, C, D, initial_state, "initial_state")
    batch, L, H = u.shape
    real, _ = compute_dtypes(u.dtype)
    Abar, Bbar, C, state_dtype = prepare_system(u.dtype, H, Abar, Bbar, C, dense)
    if initial_state is None:
        h = torch.zeros(batch, H, Bbar.shape[-1], dtype=state_dtype, device=u.device)
    else:
        h = initial_state.to(state_dtype)
    u_ = u.to(real)
    ys = []
    for t in range(L):
        h, y_t = recurrence_step(h, u_[:, t], Abar, Bbar, C, dense)
        ys.append(y_t)
    y = torch.stack(ys, dim=1)  # (batch, L, H)
    if D is not None:
        y = y + D.to(real) * u_
    y = y.to(u.dtype)
    return (y, h) if return_final_state else y
