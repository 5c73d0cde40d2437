"""The executable spec of the Mamba-1 selective scan: a sequential loop over time (Gu & Dao 2023, Algorithm 2).

Plain PyTorch, one `recurrence_step` per token, fine in float64. Every faster impl is tested against it. Packed
sequences (cu_seqlens) run as a loop over the sequences, each from its own initial state.
"""

from __future__ import annotations

import torch

from .step import compute_dtype, effective_dt, gate_output, recurrence_step


def selective_scan_reference(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None, return_final_state=False,
    cu_seqlens=None,
):
    """Selective scan by a loop over t.

    Glossary: x = u (input), dt = Δ (step size, before bias/softplus), A = A (continuous decay, < 0),
    B, C = B_t, C_t (input and output projections), D = skip, z = gate, h = state.

    x, dt, z (batch, seqlen, dim); A (dim, dstate); B, C (batch, seqlen, ngroups, dstate); D, dt_bias (dim,);
    initial_state (batch, dim, dstate), or (nseq, dim, dstate) with cu_seqlens (nseq + 1,) packing nseq
    sequences into one row (batch 1). Returns y (batch, seqlen, dim) in x.dtype, and with return_final_state
    also h_T (batch or nseq, dim, dstate) in the compute dtype (float32 for bf16/fp16 inputs); an empty
    sequence's final state is its initial state (zeros without one).
    Inputs are not checked here; `selective_scan` checks them.
    """
    if cu_seqlens is not None:
        y, h = _reference_packed(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, cu_seqlens)
        return (y, h) if return_final_state else y
    cdt = compute_dtype(x.dtype)
    x_, A_, B_, C_ = x.to(cdt), A.to(cdt), B.to(cdt), C.to(cdt)
    dt_ = effective_dt(dt.to(cdt), None if dt_bias is None else dt_bias.to(cdt), dt_softplus)
    batch, seqlen, dim = x.shape
    if initial_state is None:
        h = x_.new_zeros(batch, dim, A.shape[1])
    else:
        h = initial_state.to(cdt)
    ys = []
    for t in range(seqlen):
        h, y_t = recurrence_step(h, x_[:, t], dt_[:, t], A_, B_[:, t], C_[:, t])
        ys.append(y_t)
    y = torch.stack(ys, dim=1)  # (batch, seqlen, dim)
    y = gate_output(y, x_, None if D is None else D.to(cdt), None if z is None else z.to(cdt)).to(x.dtype)
    return (y, h) if return_final_state else y


def _reference_packed(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, cu_seqlens):
    """Each sequence k of the packed row runs alone from initial_state[k]; returns (y, finals (nseq, dim, dstate))."""
    bounds = cu_seqlens.tolist()
    cdt = compute_dtype(x.dtype)
    ys, finals = [], []
    for k, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = None if initial_state is None else initial_state[k:k + 1]
        if e == s:
            finals.append(x.new_zeros(1, x.shape[2], A.shape[1], dtype=cdt) if h0 is None else h0.to(cdt))
            continue
        y, h = selective_scan_reference(
            x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], D=D, z=None if z is None else z[:, s:e],
            dt_bias=dt_bias, dt_softplus=dt_softplus, initial_state=h0, return_final_state=True,
        )
        ys.append(y)
        finals.append(h)
    return torch.cat(ys, dim=1), torch.cat(finals, dim=0)
