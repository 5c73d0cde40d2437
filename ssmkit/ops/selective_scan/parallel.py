"""Selective scan as an associative, log-depth scan in PyTorch (Blelloch 1990, recursive odd-even form).

The recurrence h_t = a_t h_{t-1} + b_t composes pairs as (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2). We carry
log a_t = dt_t A (cumulative log-decays add, never under- or overflow) and exponentiate only when combining.
Packed sequences (cu_seqlens) set log a = -inf at the first token of each sequence, so exp(log a) = 0 there and
no state crosses a boundary; that token's own initial state enters through its input b instead.
"""

from __future__ import annotations

import torch

from .step import compute_dtype, effective_dt, gate_output

# The scan runs over chunks of about CHUNK_ELEMENTS states each, carrying the last state from chunk to chunk, so
# the working set stays in cache; inside a chunk it is the log-depth scan below.
CHUNK_ELEMENTS = 2**18
MIN_CHUNK_LEN = 64


def selective_scan_parallel(
    x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None, return_final_state=False,
    cu_seqlens=None,
):
    """Selective scan with all states computed by `linear_recurrence_scan`; same arguments as the reference.

    x, dt, z (batch, seqlen, dim); A (dim, dstate); B, C (batch, seqlen, ngroups, dstate); D, dt_bias (dim,);
    initial_state (batch, dim, dstate), or (nseq, dim, dstate) with cu_seqlens (nseq + 1,) packing nseq
    sequences into one row (batch 1). Returns y (batch, seqlen, dim) in x.dtype, and with return_final_state
    also h_T (batch or nseq, dim, dstate) in the compute dtype (float32 for bf16/fp16 inputs).
    Materializes the states of one chunk at a time, (batch, chunk_len, dim, dstate) in the compute dtype.
    """
    cdt = compute_dtype(x.dtype)
    x_, A_, B_, C_ = x.to(cdt), A.to(cdt), B.to(cdt), C.to(cdt)
    dt_ = effective_dt(dt.to(cdt), None if dt_bias is None else dt_bias.to(cdt), dt_softplus)
    batch, seqlen, dim = x.shape
    dstate = A.shape[1]
    chunk_len = max(MIN_CHUNK_LEN, CHUNK_ELEMENTS // (batch * dim * dstate))
    h0 = None if initial_state is None else initial_state.to(cdt)
    packing = None if cu_seqlens is None else _Packing(cu_seqlens.tolist(), h0, x.device)
    h = h0 if packing is None else None
    ys = []
    for start in range(0, seqlen, chunk_len):
        t = slice(start, start + chunk_len)
        starts = None if packing is None else packing.starts_in(start, start + chunk_len)
        y_chunk, h_chunk = _scan_chunk(x_[:, t], dt_[:, t], A_, B_[:, t], C_[:, t], h, starts)
        h = h_chunk[:, -1]
        if packing is not None and return_final_state:
            packing.collect_ends(h_chunk, start)
        ys.append(y_chunk)
    y = torch.cat(ys, dim=1) if len(ys) > 1 else ys[0]
    y = gate_output(y, x_, None if D is None else D.to(cdt), None if z is None else z.to(cdt)).to(x.dtype)
    if packing is not None and return_final_state:
        h = packing.final_states((dim, dstate), cdt)
    return (y, h) if return_final_state else y


class _Packing:
    """Where the sequences of a packed row start and end, and the final state of each as the chunks reach it."""

    def __init__(self, bounds: list[int], initial_state, device):
        self.h0, self.device = initial_state, device
        # (k, start, end) of the non-empty sequences; an empty one keeps its initial state
        self.spans = [(k, s, e) for k, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])) if s < e]
        self.finals: list = [None] * (len(bounds) - 1)

    def starts_in(self, lo: int, hi: int):
        """None, or (positions relative to lo (n,), initial states (n, dim, dstate) or None) of the sequences
        that start in [lo, hi)."""
        ks = [k for k, s, _ in self.spans if lo <= s < hi]
        if not ks:
            return None
        pos = torch.tensor([s - lo for _, s, _ in self.spans if lo <= s < hi], dtype=torch.int64,
                           device=self.device)
        return pos, None if self.h0 is None else self.h0[ks]

    def collect_ends(self, h_chunk, lo: int) -> None:
        """Keeps h at the last token of every sequence that ends in this chunk. h_chunk (1, len, dim, dstate)."""
        hi = lo + h_chunk.shape[1]
        for k, _, e in self.spans:
            if lo < e <= hi:
                self.finals[k] = h_chunk[0, e - 1 - lo].clone()  # a copy, not a view that keeps the chunk alive

    def final_states(self, state_shape, dtype):
        """(nseq, dim, dstate); an empty sequence keeps its initial state (zeros without one)."""
        zeros = torch.zeros(state_shape, dtype=dtype, device=self.device)
        return torch.stack([h if h is not None else zeros if self.h0 is None else self.h0[k]
                            for k, h in enumerate(self.finals)])


def _scan_chunk(x, dt, A, B, C, h_prev, starts=None):
    """One chunk of the scan from state h_prev (None means zero). x, dt (batch, len, dim) with dt effective;
    B, C (batch, len, ngroups, dstate); starts: None, or (positions (n,), initial states (n, dim, dstate) or
    None) of packed sequences beginning in this chunk (batch 1). Returns (y (batch, len, dim) without D or gate,
    h (batch, len, dim, dstate): every state of the chunk).
    """
    batch, length, dim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    per_group = dim // ngroups
    log_a = dt[..., None] * A  # (batch, len, dim, dstate); exp(log_a) is the ZOH decay
    b = (dt * x).view(batch, length, ngroups, per_group, 1) * B[:, :, :, None, :]  # Euler for B
    b = b.reshape(batch, length, dim, dstate)
    if starts is not None:
        pos, h0 = starts
        if h0 is not None:
            # A sequence's first state: h = a h0 + b, with its own initial state in place of the previous one.
            b = b.index_add(1, pos, (torch.exp(log_a[:, pos]) * h0[None]))
        log_a = log_a.index_fill(1, pos, float("-inf"))  # a = 0: nothing flows in from the previous sequence
    if h_prev is not None:
        # Fold the carried state into the first input: h_0 = a_0 h_prev + b_0.
        first = torch.addcmul(b[:, :1], torch.exp(log_a[:, :1]), h_prev[:, None])
        b = torch.cat([first, b[:, 1:]], dim=1)
    h = linear_recurrence_scan(log_a, b)  # (batch, len, dim, dstate)
    hg = h.view(batch, length, ngroups, per_group, dstate)
    y = torch.einsum("blgpn,blgn->blgp", hg, C).reshape(batch, length, dim)
    return y, h


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
