"""One SSD decode step in plain PyTorch: the spec of the decode kernel, and the update the reference scan uses.

h <- exp(dt A) h + dt x Bᵀ ;  y = h C + D x, gated by silu(z)   (Mamba-2, the recurrent form of SSD).
"""

from __future__ import annotations

import torch

from .pointwise import compute_dtype, effective_dt, heads_from_groups, skip_and_gate


def ssd_update(h, x, dt, A, B, C):
    """The core recurrence for one token, in the compute dtype, returning the new state and y.

    h (batch, nheads, headdim, dstate); x (batch, nheads, headdim); dt (batch, nheads) already effective;
    A (nheads,); B, C (batch, nheads, dstate) already expanded from groups.
    """
    decay = torch.exp(dt * A)  # (b, h): ZOH for the scalar A of each head
    h = h * decay[:, :, None, None] + (dt[:, :, None] * x)[..., None] * B[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", h, C)
    return h, y


def ssd_step_reference(state, x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None,
                       state_indices=None, A_is_log=False):
    """Advances `state` by one token IN PLACE and returns y (what `ssd_step(impl="reference")` runs).

    state: (nslots, nheads, headdim, dstate), any float dtype (the update is computed in float32 or float64).
    x, z: (batch, nheads, headdim); dt: (batch, nheads); A, dt_bias: (nheads,); B, C: (batch, ngroups, dstate);
    D: (nheads,) or (nheads, headdim). state_indices (batch,) int picks the slot of each row (continuous batching);
    without it, nslots == batch and row i uses slot i. A_is_log: A holds A_log, A = -exp(A_log).
    Returns y (batch, nheads, headdim) in x.dtype.
    """
    nheads = x.shape[1]
    ct = compute_dtype(x.dtype) if state.dtype != torch.float64 else torch.float64
    h = state if state_indices is None else state[state_indices]
    dt_eff = effective_dt(dt, dt_bias, dt_softplus, dt_limit).to(ct)
    A = -torch.exp(A.to(ct)) if A_is_log else A.to(ct)
    h_new, y = ssd_update(h.to(ct), x.to(ct), dt_eff, A,
                          heads_from_groups(B, nheads).to(ct), heads_from_groups(C, nheads).to(ct))
    if state_indices is None:
        state.copy_(h_new)
    else:
        state[state_indices] = h_new.to(state.dtype)
    return skip_and_gate(y, x, D, z).to(x.dtype)
