"""SSD (Mamba-2) as a recurrence, token by token: the executable spec every other form is tested against.

h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_tᵀ,  y_t = h_t C_t   (Dao & Gu 2024, eq. for the selective SSM with
scalar A per head). Linear in T, slow in Python, exact in float64.
"""

from __future__ import annotations

import torch

from .pointwise import compute_dtype, effective_dt, heads_from_groups, skip_and_gate
from .step import ssd_update


def ssd_recurrent(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None,
                  initial_state=None, cu_seqlens=None):
    """x (batch, seqlen, nheads, headdim); dt (batch, seqlen, nheads); B, C (batch, seqlen, ngroups, dstate).

    initial_state (batch, nheads, headdim, dstate), or (nseq, ...) with cu_seqlens (batch must be 1).
    Returns (y (batch, seqlen, nheads, headdim) in x.dtype, final_state in the compute dtype).
    """
    if cu_seqlens is not None:
        ys, finals = [], []
        for k in range(len(cu_seqlens) - 1):
            s, e = int(cu_seqlens[k]), int(cu_seqlens[k + 1])
            h0 = None if initial_state is None else initial_state[k:k + 1]
            zk = None if z is None else z[:, s:e]
            y, f = ssd_recurrent(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], D=D, z=zk, dt_bias=dt_bias,
                                 dt_softplus=dt_softplus, dt_limit=dt_limit, initial_state=h0)
            ys.append(y)
            finals.append(f)
        return torch.cat(ys, dim=1), torch.cat(finals, dim=0)

    batch, seqlen, nheads, headdim = x.shape
    ct = compute_dtype(x.dtype)
    dt = effective_dt(dt, dt_bias, dt_softplus, dt_limit)
    B, C = heads_from_groups(B, nheads).to(ct), heads_from_groups(C, nheads).to(ct)
    h = (torch.zeros(batch, nheads, headdim, B.shape[-1], dtype=ct, device=x.device)
         if initial_state is None else initial_state.to(ct))
    ys = []
    for t in range(seqlen):
        h, y = ssd_update(h, x[:, t].to(ct), dt[:, t], A.to(ct), B[:, t], C[:, t])
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape, dtype=ct)
    return skip_and_gate(y, x, D, z).to(x.dtype), h
