"""SSD in its attention form: materialize M = L ∘ (C Bᵀ) and multiply, O(T²) (the "dual" side of SSD).

y_j = sum_{i<=j} C_j·B_i exp(a_{i+1} + ... + a_j) dt_i x_i, with a = dt A (Dao & Gu 2024, section 3).
Packed sequences (cu_seqlens) zero the mask between different sequences.
"""

from __future__ import annotations

import torch

from ..varlen import sequence_ids
from .decay import add_initial_state, segsum
from .pointwise import compute_dtype, effective_dt, heads_from_groups, skip_and_gate


def ssd_quadratic(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None,
                  initial_state=None, cu_seqlens=None):
    """Same arguments and result as `ssd_recurrent`: (y in x.dtype, final_state in the compute dtype)."""
    batch, seqlen, nheads, headdim = x.shape
    ct = compute_dtype(x.dtype)
    dt = effective_dt(dt, dt_bias, dt_softplus, dt_limit)
    B, C = heads_from_groups(B, nheads).to(ct), heads_from_groups(C, nheads).to(ct)
    a = dt * A.to(ct)  # (b, l, h) log-decay per step
    xdt = x.to(ct) * dt[..., None]  # (b, l, h, p): Euler step for the input

    seg = segsum(a.transpose(1, 2))  # (b, h, l, l)
    if cu_seqlens is not None:
        seq = sequence_ids(cu_seqlens, seqlen)
        seg = seg.masked_fill(seq[:, None] != seq[None, :], float("-inf"))
    L = torch.exp(seg)
    scores = torch.einsum("bjhn,bihn->bhji", C, B) * L  # M = L ∘ C Bᵀ
    y = torch.einsum("bhji,bihp->bjhp", scores, xdt)

    # The final state of each sequence is the last row of L applied to the B x outer products.
    if cu_seqlens is None:
        weights = L[:, :, -1, :]  # (b, h, l)
    else:
        ends = (cu_seqlens[1:] - 1).clamp(min=0)
        empty = cu_seqlens[1:] == cu_seqlens[:-1]
        weights = L[0, :, ends, :].transpose(0, 1)  # (nseq, h, l)
        weights = weights * (~empty).to(ct)[:, None, None]
        xdt, B = xdt.expand(len(ends), -1, -1, -1), B.expand(len(ends), -1, -1, -1)
    final = torch.einsum("bhi,bihp,bihn->bhpn", weights, xdt, B)

    y, final = add_initial_state(y, final, a, C, initial_state, cu_seqlens)
    return skip_and_gate(y, x, D, z).to(x.dtype), final
