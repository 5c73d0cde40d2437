"""Decay factors between positions of the SSD recurrence, and the initial state's share of the output.

With a_t = dt_t A, the state decays from position i to j >= i by exp(a_{i+1} + ... + a_j) (the 1-semiseparable
mask L of the SSD paper). The SSM is linear in (x, h0), so the initial state's contribution is added separately.
"""

from __future__ import annotations

import torch


def segsum(a):
    """a (..., T) -> (..., T, T) with out[..., j, i] = a_{i+1} + ... + a_j for j >= i and -inf for j < i.

    Built by a cumulative sum over a masked copy rather than as a difference of two cumsums, so small sums are
    exact even when the running total is large.
    """
    T = a.shape[-1]
    rep = a[..., :, None].expand(*a.shape, T)  # rep[..., k, i] = a_k
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = torch.cumsum(rep.masked_fill(~strict, 0.0), dim=-2)  # sums[..., j, i] = sum_{i<k<=j} a_k
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return sums.masked_fill(~causal, float("-inf"))


def add_initial_state(y, final, a, C, initial_state, cu_seqlens=None):
    """Adds h0's contribution: y_j += exp(a_start + ... + a_j) C_j·h0 and final += exp(sum of a) h0.

    y (batch, seqlen, nheads, headdim); final like initial_state; a (batch, seqlen, nheads);
    C (batch, seqlen, nheads, dstate) expanded to heads; initial_state (batch or nseq, nheads, headdim, dstate).
    """
    if initial_state is None:
        return y, final
    h0 = initial_state.to(y.dtype)
    bounds = [(0, y.shape[1])] if cu_seqlens is None else list(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()))
    parts, finals = [], []
    for k, (s, e) in enumerate(bounds):
        hk = h0 if cu_seqlens is None else h0[k:k + 1]
        decay = torch.exp(torch.cumsum(a[:, s:e], dim=1))  # (b, len, h): from the sequence start, inclusive
        parts.append(torch.einsum("bjhn,bhpn->bjhp", C[:, s:e], hk) * decay[..., None])
        total = decay[:, -1] if e > s else torch.ones_like(hk[:, :, 0, 0])
        finals.append(hk * total[:, :, None, None])
    return y + torch.cat(parts, dim=1), final + torch.cat(finals, dim=0)
