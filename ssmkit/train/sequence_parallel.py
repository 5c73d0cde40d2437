"""Sequence parallel SSD: each rank holds a contiguous slice of the sequence (Dao & Gu 2024, section 8.2).

Each rank scans its slice from a zero state, the ranks exchange (final state, total decay) in one all-gather, each
composes the state entering its slice, and adds that state's contribution: SSD is linear in its initial state.
SequenceParallelMamba2 runs a whole Mamba-2 mixer this way (its causal conv reads a halo of the previous slice).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ssmkit.layers import Mamba2
from ssmkit.layers.ssm_inputs import decay_rate
from ssmkit.ops.conv1d import causal_conv1d
from ssmkit.ops.ssd import ssd
from ssmkit.ops.ssd.pointwise import effective_dt, heads_from_groups, skip_and_gate


def sequence_slice(seqlen: int, rank: int, world: int) -> slice:
    """The positions of rank's contiguous slice; the first seqlen % world ranks get one position more."""
    base, extra = divmod(seqlen, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class _ExchangeStates(torch.autograd.Function):
    """(this slice's zero-start final state, its total log decay, h0) -> the state entering this slice.

    Forward: one all-gather of (state, decay). Backward: every rank's state and decay gradients (from its own
    h_in) are summed over ranks in one all-reduce, and each rank keeps its own entry; the total loss is the sum
    of the ranks' losses. Both passes issue exactly one collective on every rank, whichever rank needs which
    entries, so no rank waits for a collective another rank skips.
    """

    @staticmethod
    def forward(ctx, local_final, total, h0, group):
        gathered = _exchange_fwd(local_final, total, group)
        ctx.group, ctx.has_h0 = group, h0 is not None
        ctx.save_for_backward(gathered, h0 if h0 is not None else local_final.new_zeros(()))
        return _compose(gathered, local_final.shape, dist.get_rank(group), h0)

    @staticmethod
    def backward(ctx, grad_h_in):
        gathered, h0 = ctx.saved_tensors
        d_final, d_total, d_h0 = _exchange_bwd(gathered, h0 if ctx.has_h0 else None, grad_h_in, ctx.group)
        return d_final, d_total, d_h0, None


def _pack(state: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """state (batch, nheads, headdim, dstate), total (batch, nheads) -> one flat vector."""
    return torch.cat([state.reshape(-1), total.reshape(-1)])


def _exchange_fwd(local_final, total, group) -> torch.Tensor:
    """Every rank's packed (state, decay): (world, state numel + decay numel)."""
    mine = _pack(local_final.detach(), total.detach().to(local_final.dtype))
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, mine, group=group)
    return torch.stack(parts)


def _compose(gathered, state_shape, rank: int, h0):
    """h_in of `rank` from the packed rows (see incoming_state)."""
    n = gathered.shape[1] - state_shape[0] * state_shape[1]
    states = gathered[:, :n].reshape(-1, *state_shape)
    totals = gathered[:, n:].reshape(-1, *state_shape[:2])
    return incoming_state(states, totals, rank, h0)


def _exchange_bwd(gathered, h0, grad_h_in, group):
    """Gradients of (this rank's state, decay, h0): differentiate every rank's _compose, sum over ranks."""
    rank, shape = dist.get_rank(group), grad_h_in.shape
    with torch.enable_grad():
        leaves = gathered.detach().requires_grad_()
        h0_leaf = None if h0 is None else h0.detach().requires_grad_()
        h_in = _compose(leaves, shape, rank, h0_leaf)
        wrt = [leaves] + ([h0_leaf] if h0 is not None else [])
        # rank 0 without h0 starts from zeros: nothing to differentiate, but it still joins the all-reduce
        grads = (torch.autograd.grad(h_in, wrt, grad_h_in, allow_unused=True) if h_in.requires_grad
                 else (None,) * len(wrt))
    d_gathered = torch.zeros_like(gathered) if grads[0] is None else grads[0].contiguous()
    dist.all_reduce(d_gathered, group=group)
    n = shape.numel()
    d_h0 = None if h0 is None else (torch.zeros_like(h0) if grads[1] is None else grads[1])
    return d_gathered[rank, :n].reshape(shape), d_gathered[rank, n:].reshape(shape[:2]), d_h0


def incoming_state(states: torch.Tensor, log_decays: torch.Tensor, rank: int,
                   initial_state: torch.Tensor | None = None) -> torch.Tensor:
    """The state entering rank's slice: h_in(0) = initial_state (or 0), h_in(s+1) = exp(a_s) h_in(s) + h_s.

    states (world, batch, nheads, headdim, dstate): each slice's final state from a zero start;
    log_decays (world, batch, nheads): a_s = sum over slice s of dt * A. Returns (batch, nheads, headdim, dstate).
    """
    h = torch.zeros_like(states[0]) if initial_state is None else initial_state.to(states.dtype)
    for s in range(rank):
        h = torch.exp(log_decays[s])[..., None, None] * h + states[s]
    return h


def ssd_sequence_parallel(x, dt, A, B, C, *, D=None, z=None, dt_bias=None, dt_softplus=False, dt_limit=None,
                          chunk_size=64, initial_state=None, return_final_state=False, group=None, impl="auto"):
    """`ssd` over a sequence cut into contiguous slices, one per rank of `group`, in rank order.

    x, z (batch, L_r, nheads, headdim); dt (batch, L_r, nheads); B, C (batch, L_r, ngroups, dstate): this rank's
    slice (L_r >= 1, lengths may differ between ranks). A, D, dt_bias (nheads,) and initial_state (batch, nheads,
    headdim, dstate), the state before the whole sequence, are the same on every rank; their gradients, like those
    of any replicated parameter, are this rank's part and must be summed over ranks (DDP does this).
    Returns y (batch, L_r, nheads, headdim) and with return_final_state the state after this rank's slice (the
    last rank's is the final state of the whole sequence). Equal to `ssd` on the whole sequence because
    y = y(x, h0 = 0) + C exp(cumsum(dt A)) h_in, the second term being the incoming state's contribution.
    Every rank must call this with the same shapes but L_r, and backpropagate through its y: the backward pass
    joins one all-reduce on every rank.
    """
    dt = effective_dt(dt, dt_bias, dt_softplus, dt_limit)
    y, local_final = ssd(x, dt, A, B, C, D=D, chunk_size=chunk_size, return_final_state=True, impl=impl)
    log_decay = torch.cumsum(dt * A.to(dt.dtype), dim=1)  # (batch, L_r, nheads)
    total = log_decay[:, -1]  # (batch, nheads): log of the decay across the whole slice
    h0 = None if initial_state is None else initial_state.to(local_final.dtype)
    h_in = _ExchangeStates.apply(local_final, total, h0, group)
    C_heads = heads_from_groups(C, x.shape[2]).to(h_in.dtype)  # (batch, L_r, nheads, dstate)
    y = y.to(h_in.dtype) + torch.exp(log_decay)[..., None] * torch.einsum("blhn,bhpn->blhp", C_heads, h_in)
    y = skip_and_gate(y, x, z=z).to(x.dtype)
    if not return_final_state:
        return y
    return y, torch.exp(total)[..., None, None] * h_in + local_final


class _PreviousRows(torch.autograd.Function):
    """tail (batch, k, channels), this slice's last k rows -> the previous rank's last k rows (zeros on rank 0,
    which is what the causal conv's left zero padding reads). One all-gather forward, one all-reduce backward."""

    @staticmethod
    def forward(ctx, tail, group):
        ctx.group, ctx.rank, ctx.world = group, dist.get_rank(group), dist.get_world_size(group)
        parts = [torch.empty_like(tail) for _ in range(ctx.world)]
        dist.all_gather(parts, tail.contiguous(), group=group)
        return parts[ctx.rank - 1] if ctx.rank > 0 else torch.zeros_like(tail)

    @staticmethod
    def backward(ctx, grad):
        slots = grad.new_zeros(ctx.world, *grad.shape)  # slot s: the gradient of rank s's tail
        if ctx.rank > 0:
            slots[ctx.rank - 1] = grad
        dist.all_reduce(slots, group=ctx.group)
        return slots[ctx.rank], None


class SequenceParallelMamba2(nn.Module):
    """A Mamba-2 mixer (`inner`, full weights, the same on every rank) run on this rank's slice of the sequence.

    The depthwise causal conv reads d_conv - 1 rows of the previous slice (exchanged as a halo); SSD passes its
    state through ssd_sequence_parallel. Everything else in the block is position-wise. No decode state, padding
    mask or cu_seqlens: sequence parallelism is for training on long sequences.
    """

    def __init__(self, inner: Mamba2, group=None):
        super().__init__()
        self.inner = inner
        self.group = group

    def forward(self, hidden, state=None, key_padding_mask=None, *, cu_seqlens=None):
        """hidden (batch, L_r, d_model), this rank's slice (L_r >= d_conv - 1) -> (batch, L_r, d_model)."""
        if state is not None or key_padding_mask is not None or cu_seqlens is not None:
            raise ValueError("state: sequence parallel Mamba-2 takes no state, key_padding_mask or cu_seqlens")
        m, (batch, seqlen, _) = self.inner, hidden.shape
        k = m.conv1d.kernel_size[0] - 1
        if seqlen < k:
            raise ValueError(f"hidden: each rank's slice needs at least d_conv - 1 = {k} positions, got {seqlen}")
        z, xBC, dt = m.in_proj(hidden).split([m.d_inner, m.conv_dim, m.nheads], dim=-1)
        halo = _PreviousRows.apply(xBC[:, seqlen - k:], self.group)
        xBC = causal_conv1d(torch.cat([halo, xBC], dim=1), m.conv1d.weight[:, 0], m.conv1d.bias,
                            activation="silu")[:, k:]
        x, B, C = m._split_xBC(xBC)
        A = decay_rate(m.A_log)  # as Mamba2.forward
        y = ssd_sequence_parallel(x, dt, A, B, C, D=m.D, dt_bias=m.dt_bias, dt_softplus=True,
                                  dt_limit=m.dt_limit, chunk_size=m.chunk_size, group=self.group)
        return m.out_proj(m.norm(y.reshape(batch, seqlen, m.d_inner), z))


def shard_sequence_parallel(model: nn.Module, group=None) -> nn.Module:
    """Wraps, in place, every mixer of a LanguageModel of Mamba-2 layers for sequence parallelism; each rank then
    passes its slice of input_ids (sequence_slice). Gradients of all parameters are this rank's part: sum them over
    ranks (all-reduce, as DDP does). Other mixer kinds raise ValueError. Returns the model."""
    for i, layer in enumerate(model.layers):
        if layer.mixer_kind != "mamba2":
            raise ValueError(f"mixers[{i}]: sequence parallel supports 'mamba2', got {layer.mixer_kind!r}")
        layer.mixer = SequenceParallelMamba2(layer.mixer, group)
    return model
