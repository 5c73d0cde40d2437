"""Selective scan as an associative, log-depth scan in PyTorch (Blelloch 1990, recursive odd-even form).

The recurrence h_t = a_t h_{t-1} + b_t composes pairs as (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2). We carry
log a_t = dt_t A (cumulative log-decays add, never under- or overflow) and exponentiate only when combining.
"""

from __future__ import annotations

import torch

from .step import compute_dtype, effective_dt, gate_output

# The scan runs over chunks of about CHUNK_ELEMENTS states each, carrying the last state from chunk to chunk, so
# the working set stays in cache; inside a chunk it is the log-depth scan below.
CHUNK_ELEMENTS = 2**18
MIN_CHUNK_LEN = 64


def selective_scan_parallel(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None, return_final_state=False
):
    """Selective scan with all states computed by `linear_recurrence_scan`; same arguments as the reference.

    x, dt, z (batch, seqlen, dim); A (dim, dstate); B, C (batch, seqlen, ngroups, dstate); D, dt_bias (dim,);
    initial_state (batch, dim, dstate). Returns y (batch, seqlen, dim) in x.dtype, and with
    return_final_state also h_T (batch, dim, dstate) in the compute dtype (float32 for bf16/fp16 inputs).
    Materializes the states of one chunk at a time, (batch, chunk_len, dim, dstate) in the compute dtype.
    """
    cdt = compute_dtype(x.dtype)
    x_, A_, B_, C_ = x.to(cdt), A.to(cdt), B.to(cdt), C.to(cdt)
    dt_ = effective_dt(dt.to(cdt), None if dt_bias is None else dt_bias.to(cdt), dt_softplus)
    batch, seqlen, dim = x.shape
    dstate = A.shape[1]
    chunk_len = max(MIN_CHUNK_LEN, CHUNK_ELEMENTS // (batch * dim * dstate))
    h = None if initial_state is None else initial_state.to(cdt)
    ys = []
    for start in range(0, seqlen, chunk_len):
        t = slice(start, start + chunk_len)
        y_chunk, h = _scan_chunk(x_[:, t], dt_[:, t], A_, B_[:, t], C_[:, t], h)
        ys.append(y_chunk)
    y = torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]
    y = gate_output(y, x_, None if D is None else D.to(cdt), None if z is None else z.to(cdt)).to(x.dtype)
    return (y, h) if return_final_state else y


def _scan_chunk(x, dt, A, B, C, h_prev):
    """One chunk of the scan from state h_prev (None means zero). x, dt (batch, len, dim) with dt effective;
    B, C (batch, len, ngroups, dstate). Returns (y (batch, len, dim) without D or gate, h_last (batch, dim, dstate)).
    """
    batch, length, dim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    per_group = dim // ngroups
    log_a = dt[..., None] * A  # (batch, len, dim, dstate); exp(log_a) is the ZOH decay
    b = (dt * x).view(batch, length, ngroups, per_group, 1) * B[:, :, :, None, :]  # Euler for B
    b = b.reshape(batch, length, dim, dstate)
    if h_prev is not None:
        # Fold the carried state into the first input: h_0 = a_0 h_prev + b_0.
        first = torch.addcmul(b[:, :1], torch.exp(log_a[:, :1]), h_prev[:, None])
        b = torch.cat([first, b[:, 1:]], dim=1)
    h = linear_recurrence_scan(log_a, b)  # (batch, len, dim, dstate)
    hg = h.view(batch, length, ngroups, per_group, dstate)
    y = torch.einsum("blgpn,blgn->blgp", hg, C).reshape(batch, length, dim)
    return y, h[:, -1]


def linear_recurrence_scan(log_a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All h_t of h_t = exp(log_a_t) h_{t-1} + b_t with h_{-1} = 0, along dim 1, in O(T) work and O(log T) depth.

    log_a, b (batch, seqlen, ...), same shape. Each level combines neighbours (2k, 2k+1) into one element,
    solves the half-length problem for the odd positions, then fills in the even positions from their left
    neighbours. With an odd length the last element has no partner and is filled in like the other even ones.
    """
    seqlen = b.shape[1]
    if seqlen == 1:
        return b
    paired = seqlen - seqlen % 2
    la_even, la_odd = log_a[:, 0:paired:2], log_a[:, 1:paired:2]
    # (a_even, b_even) then (a_odd, b_odd) = (a_even a_odd, a_odd b_even + b_odd)
    b_pair = torch.addcmul(b[:, 1:paired:2], torch.exp(la_odd), b[:, 0:paired:2])
    h_odd = linear_recurrence_scan(la_even + la_odd, b_pair)
    h = torch.empty_like(b)
    h[:, 1:paired:2] = h_odd
    h[:, 0] = b[:, 0]
    # h_{2k} = a_{2k} h_{2k-1} + b_{2k} for k >= 1
    h[:, 2::2] = torch.addcmul(b[:, 2::2], torch.exp(log_a[:, 2::2]), h_odd[:, : (seqlen - 1) // 2])
    return h
