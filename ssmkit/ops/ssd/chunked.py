"""SSD by block decomposition into chunks of Q tokens: the matmul-dominated form the GPU kernels implement.

Dao & Gu 2024, section 6: (1) diagonal blocks: the quadratic form inside each chunk; (2) each chunk's state
from its own inputs; (3) a short scan passing states across the T/Q chunks; (4) each chunk's incoming state to
its outputs. Packed sequences (cu_seqlens) stop every decay at a sequence boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..varlen import sequence_ids
from .decay import add_initial_state
from .pointwise import compute_dtype, effective_dt, heads_from_groups, skip_and_gate


def ssd_chunked(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None,
                chunk_size=64, initial_state=None, cu_seqlens=None):
    """Same arguments and result as `ssd_recurrent`, plus chunk_size (any positive int; T need not divide)."""
    batch, seqlen, nheads, headdim = x.shape
    ct = compute_dtype(x.dtype)
    dt = effective_dt(dt, dt_bias, dt_softplus, dt_limit)
    B, C = heads_from_groups(B, nheads).to(ct), heads_from_groups(C, nheads).to(ct)
    a = dt * A.to(ct)  # (b, l, h)
    xdt = x.to(ct) * dt[..., None]  # (b, l, h, p)
    seq = (sequence_ids(cu_seqlens, seqlen) if cu_seqlens is not None
           else torch.zeros(seqlen, dtype=torch.int64, device=x.device))

    # Pad to whole chunks with a = 0 and x = 0: the padding neither decays nor feeds the state.
    Q = chunk_size
    pad = (-seqlen) % Q
    nc = (seqlen + pad) // Q
    a_c = F.pad(a, (0, 0, 0, pad)).reshape(batch, nc, Q, nheads)
    xdt_c = F.pad(xdt, (0, 0, 0, 0, 0, pad)).reshape(batch, nc, Q, nheads, headdim)
    B_c = F.pad(B, (0, 0, 0, 0, 0, pad)).reshape(batch, nc, Q, nheads, -1)
    C_c = F.pad(C, (0, 0, 0, 0, 0, pad)).reshape(batch, nc, Q, nheads, -1)
    seq_c = F.pad(seq, (0, pad), value=int(seq[-1]) if seqlen else 0).reshape(nc, Q)
    acum = torch.cumsum(a_c, dim=2)  # (b, c, Q, h): decay from the chunk start, inclusive

    # 1. Diagonal blocks: L ∘ C Bᵀ inside each chunk, masked to causal pairs of one sequence.
    same = (seq_c[:, :, None] == seq_c[:, None, :]) & torch.tril(
        torch.ones(Q, Q, dtype=torch.bool, device=x.device))  # (c, Qj, Qi)
    seg = (acum[:, :, :, None, :] - acum[:, :, None, :, :]).masked_fill(~same[None, :, :, :, None], float("-inf"))
    scores = torch.einsum("bcjhn,bcihn->bcjih", C_c, B_c) * torch.exp(seg)
    y_diag = torch.einsum("bcjih,bcihp->bcjhp", scores, xdt_c)

    # 2. Each chunk's own state at its last position (only tokens of the sequence still running there).
    last_seq = seq_c[:, -1]  # (c,)
    w = torch.exp(acum[:, :, -1:, :] - acum) * (seq_c == last_seq[:, None]).to(ct)[None, :, :, None]
    S = torch.einsum("bcih,bcihp,bcihn->bchpn", w, xdt_c, B_c)

    # 3. Pass states across chunks; a state survives a chunk only if its sequence runs through it.
    prev_seq = torch.cat([seq.new_full((1,), -1), last_seq[:-1]])  # the sequence entering each chunk
    carry = (prev_seq == last_seq).to(ct)[None, :, None] * torch.exp(acum[:, :, -1, :])  # (b, c, h)
    s = torch.zeros_like(S[:, 0])
    incoming = []
    for c in range(nc):
        incoming.append(s)
        s = S[:, c] + carry[:, c, :, None, None] * s
    S_in = torch.stack(incoming, dim=1)  # (b, c, h, p, n)

    # 4. Incoming state to outputs, for positions of the sequence that entered the chunk.
    w_in = torch.exp(acum) * (seq_c == prev_seq[:, None]).to(ct)[None, :, :, None]
    y_off = torch.einsum("bcjhn,bchpn->bcjhp", C_c, S_in) * w_in[..., None]
    y = (y_diag + y_off).reshape(batch, nc * Q, nheads, headdim)[:, :seqlen]

    if cu_seqlens is None:
        final = s  # padding does not change the state, so the state after the last chunk is final
    else:
        final = _states_at_ends(cu_seqlens, Q, acum, xdt_c, B_c, seq_c, prev_seq, S_in)
    y, final = add_initial_state(y, final, a, C, initial_state, cu_seqlens)
    return skip_and_gate(y, x, D, z).to(x.dtype), final


def _states_at_ends(cu_seqlens, Q, acum, xdt_c, B_c, seq_c, prev_seq, S_in):
    """The state at each sequence's last token (batch 1): its chunk's own part plus the decayed incoming state."""
    finals = []
    for k in range(len(cu_seqlens) - 1):
        s, e = int(cu_seqlens[k]), int(cu_seqlens[k + 1])
        if e == s:
            finals.append(torch.zeros_like(S_in[:, 0]))
            continue
        c, o = divmod(e - 1, Q)
        mine = ((seq_c[c, :o + 1] == k).to(acum.dtype))[None, :, None]
        w = torch.exp(acum[:, c, o:o + 1] - acum[:, c, :o + 1]) * mine  # (1, o+1, h)
        state = torch.einsum("bih,bihp,bihn->bhpn", w, xdt_c[:, c, :o + 1], B_c[:, c, :o + 1])
        if int(prev_seq[c]) == k:
            state = state + torch.exp(acum[:, c, o])[:, :, None, None] * S_in[:, c]
        finals.append(state)
    return torch.cat(finals, dim=0)
