"""Tensor parallelism for the Mamba-2 and attention mixers (Dao & Gu 2024, section 8.1; Megatron-LM's layout).

Each rank keeps its share of heads: in_proj (q/k/v_proj) is split by columns, out_proj (o_proj) by rows, so a block
needs one all-reduce in the forward pass (and one, of the input gradient, in the backward pass).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

from ssmkit.layers import Attention, Mamba2


class _CopyToRanks(torch.autograd.Function):
    """Identity forward; the backward pass sums the input gradient over ranks (Megatron's `f`)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromRanks(torch.autograd.Function):
    """Sum over ranks forward; identity backward (Megatron's `g`): the output is replicated on every rank."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class TensorParallelMixer(nn.Module):
    """A rank-local mixer (`inner`, whose output projection has no bias) between the two collectives:
    out = all_reduce(inner(hidden)) + bias. The bias of the output projection is added once, after the sum."""

    def __init__(self, inner: nn.Module, out_bias: torch.Tensor | None, group=None):
        super().__init__()
        self.inner = inner
        self.out_bias = None if out_bias is None else nn.Parameter(out_bias.detach().clone())
        self.group = group

    def allocate_state(self, *args, **kwargs):
        """The rank-local decode state (this rank's heads only)."""
        return self.inner.allocate_state(*args, **kwargs)

    def _finish(self, partial: torch.Tensor) -> torch.Tensor:
        out = _ReduceFromRanks.apply(partial, self.group)
        return out if self.out_bias is None else out + self.out_bias

    def forward(self, hidden, state=None, key_padding_mask=None, **kwargs):
        """hidden (batch, seqlen, d_model), replicated on every rank -> (batch, seqlen, d_model), replicated."""
        return self._finish(self.inner(_CopyToRanks.apply(hidden, self.group), state, key_padding_mask, **kwargs))

    def step(self, hidden, state):
        """One token: hidden (batch, d_model) -> (batch, d_model)."""
        return self._finish(self.inner.step(_CopyToRanks.apply(hidden, self.group), state))


def _rows(w: torch.Tensor, parts: list[tuple[int, int]]) -> torch.Tensor:
    """The rows [start, stop) of each part of w, concatenated along dim 0."""
    return torch.cat([w[a:b] for a, b in parts], dim=0)


def _assign(local: nn.Module, state: dict) -> None:
    """Sets every parameter of `local` to a copy of its slice in `state` (keeping the full model's dtypes)."""
    names = {n for n, _ in local.named_parameters()}
    assert names == set(state), (names, set(state))
    for name, value in state.items():
        local.get_parameter(name).data = value.detach().clone()


def mamba2_shard_ranges(m: Mamba2, rank: int, world: int) -> dict:
    """Index ranges of rank's heads and groups in the full mixer's in_proj rows and conv channels.

    in_proj rows are [z (d_inner) | x (d_inner) | B (ngroups * d_state) | C (ngroups * d_state) | dt (nheads)];
    the conv channels are the middle [x | B | C] part. Head h reads group h // (nheads // ngroups), so a
    contiguous block of heads reads a contiguous block of groups when ngroups % world == 0.
    """
    di, gn, N = m.d_inner, m.ngroups * m.d_state, m.d_state
    hl, gl = m.nheads // world, m.ngroups // world
    x = (rank * hl * m.headdim, (rank + 1) * hl * m.headdim)
    g = (rank * gl * N, (rank + 1) * gl * N)
    heads = (rank * hl, (rank + 1) * hl)
    conv = [x, (di + g[0], di + g[1]), (di + gn + g[0], di + gn + g[1])]
    dt0 = di + m.conv_dim  # first dt row of in_proj
    in_proj = [x] + [(di + a, di + b) for a, b in conv] + [(dt0 + heads[0], dt0 + heads[1])]
    return {"in_proj": in_proj, "conv": conv, "heads": heads, "inner": x}


def shard_mamba2(m: Mamba2, rank: int, world: int, group=None) -> TensorParallelMixer:
    """This rank's part of a full Mamba-2 mixer: nheads / world heads, ngroups / world groups and norm groups."""
    if m.nheads % world or m.ngroups % world:
        raise ValueError(f"mamba2_ngroups: tensor parallel needs nheads ({m.nheads}) and ngroups ({m.ngroups}) "
                         f"divisible by the world size {world}")
    if m.norm.group_size != m.d_inner // m.ngroups:
        raise ValueError(f"mamba2_norm_per_group: tensor parallel needs the gated norm per group (group size "
                         f"{m.d_inner // m.ngroups}), got group size {m.norm.group_size}")
    r = mamba2_shard_ranges(m, rank, world)
    di, nh, ng = m.d_inner // world, m.nheads // world, m.ngroups // world
    lo, hi = m.dt_limit if m.dt_limit is not None else (0.0, float("inf"))
    local_cfg = SimpleNamespace(
        d_model=m.in_proj.in_features, mamba2_d_inner=di, mamba2_d_state=m.d_state, mamba2_nheads=nh,
        mamba2_headdim=m.headdim, mamba2_ngroups=ng, mamba2_conv_dim=di + 2 * ng * m.d_state,
        mamba2_chunk_size=m.chunk_size, mamba2_dt_limit=(lo, hi), mamba2_proj_bias=m.in_proj.bias is not None,
        mamba2_d_conv=m.conv1d.kernel_size[0], mamba2_conv_bias=m.conv1d.bias is not None,
        mamba2_norm_group_size=m.norm.group_size, norm_eps=m.norm.eps)
    local = Mamba2(local_cfg).to(device=m.A_log.device, dtype=m.in_proj.weight.dtype)
    h0, h1 = r["heads"]
    a, b = r["inner"]
    state = {"in_proj.weight": _rows(m.in_proj.weight, r["in_proj"]),
             "conv1d.weight": _rows(m.conv1d.weight, r["conv"]),
             "dt_bias": m.dt_bias[h0:h1], "A_log": m.A_log[h0:h1], "D": m.D[h0:h1],
             "norm.weight": m.norm.weight[a:b], "out_proj.weight": m.out_proj.weight[:, a:b]}
    if m.in_proj.bias is not None:
        state["in_proj.bias"] = _rows(m.in_proj.bias, r["in_proj"])
    if m.conv1d.bias is not None:
        state["conv1d.bias"] = _rows(m.conv1d.bias, r["conv"])
    local.out_proj.register_parameter("bias", None)
    _assign(local, state)
    return TensorParallelMixer(local, m.out_proj.bias, group)


def shard_attention(m: Attention, rank: int, world: int, group=None) -> TensorParallelMixer:
    """This rank's part of a full attention mixer: n_heads / world query heads, n_kv_heads / world kv heads."""
    if m.n_heads % world or m.n_kv_heads % world:
        raise ValueError(f"n_kv_heads: tensor parallel needs n_heads ({m.n_heads}) and n_kv_heads "
                         f"({m.n_kv_heads}) divisible by the world size {world}")
    h, hkv, hd = m.n_heads // world, m.n_kv_heads // world, m.head_dim
    local_cfg = SimpleNamespace(
        d_model=m.q_proj.in_features, n_heads=h, n_kv_heads=hkv, head_dim=hd, use_rope=m.use_rope,
        rope_theta=m.rope_theta, rotary_dim=m.rotary_dim, attn_bias=m.q_proj.bias is not None)
    local = Attention(local_cfg).to(device=m.q_proj.weight.device, dtype=m.q_proj.weight.dtype)
    q, kv = slice(rank * h * hd, (rank + 1) * h * hd), slice(rank * hkv * hd, (rank + 1) * hkv * hd)
    state = {"q_proj.weight": m.q_proj.weight[q], "k_proj.weight": m.k_proj.weight[kv],
             "v_proj.weight": m.v_proj.weight[kv], "o_proj.weight": m.o_proj.weight[:, q]}
    if m.q_proj.bias is not None:
        state.update({"q_proj.bias": m.q_proj.bias[q], "k_proj.bias": m.k_proj.bias[kv],
                      "v_proj.bias": m.v_proj.bias[kv]})
    local.o_proj.register_parameter("bias", None)
    _assign(local, state)
    return TensorParallelMixer(local, m.o_proj.bias, group)


SHARDERS = {"mamba2": shard_mamba2, "attention": shard_attention}


def shard_tensor_parallel(model: nn.Module, rank: int | None = None, world: int | None = None,
                          group=None) -> nn.Module:
    """Replaces, in place, each Mamba-2 and attention mixer of a LanguageModel by this rank's shard.

    Every rank must start from the same full weights (same seed or the same checkpoint). Embeddings, norms and
    feed-forwards stay replicated; their gradients are equal on every rank, so no reduction is needed for them.
    Other mixer kinds (mamba, s4) are not split and raise ValueError. Returns the model.
    """
    rank = dist.get_rank(group) if rank is None else rank
    world = dist.get_world_size(group) if world is None else world
    for i, layer in enumerate(model.layers):
        if layer.mixer_kind not in SHARDERS:
            raise ValueError(f"mixers[{i}]: tensor parallel supports {sorted(SHARDERS)}, got {layer.mixer_kind!r}")
        layer.mixer = SHARDERS[layer.mixer_kind](layer.mixer, rank, world, group)
    return model


def _all_gather(t: torch.Tensor, group) -> list[torch.Tensor]:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.detach().contiguous(), group=group)
    return parts


def _place(full: torch.Tensor, parts: list[torch.Tensor], ranges: list, dim: int = 0) -> None:
    """Writes each rank's local tensor (parts[r], its ranges[r] blocks concatenated along dim) into full."""
    for local, blocks in zip(parts, ranges):
        offset = 0
        for a, b in blocks:
            full.narrow(dim, a, b - a).copy_(local.narrow(dim, offset, b - a))
            offset += b - a


@torch.no_grad()
def gather_mamba2(shard: TensorParallelMixer, full: Mamba2, group=None) -> None:
    """Copies every rank's shard of a Mamba-2 mixer into `full` (the inverse of shard_mamba2), on every rank."""
    world, m = dist.get_world_size(group), shard.inner
    ranges = [mamba2_shard_ranges(full, r, world) for r in range(world)]
    pick = {"in_proj": [r["in_proj"] for r in ranges], "conv": [r["conv"] for r in ranges],
            "heads": [[r["heads"]] for r in ranges], "inner": [[r["inner"]] for r in ranges]}
    layout = {"in_proj.weight": ("in_proj", 0), "in_proj.bias": ("in_proj", 0), "conv1d.weight": ("conv", 0),
              "conv1d.bias": ("conv", 0), "dt_bias": ("heads", 0), "A_log": ("heads", 0), "D": ("heads", 0),
              "norm.weight": ("inner", 0), "out_proj.weight": ("inner", 1)}
    for name, p in m.named_parameters():
        kind, dim = layout[name]
        _place(full.get_parameter(name), _all_gather(p, group), pick[kind], dim)
    if shard.out_bias is not None:
        full.out_proj.bias.copy_(shard.out_bias)


@torch.no_grad()
def gather_attention(shard: TensorParallelMixer, full: Attention, group=None) -> None:
    """Copies every rank's shard of an attention mixer into `full` (the inverse of shard_attention)."""
    world, m = dist.get_world_size(group), shard.inner
    hd = full.head_dim
    q = [[(r * m.n_heads * hd, (r + 1) * m.n_heads * hd)] for r in range(world)]
    kv = [[(r * m.n_kv_heads * hd, (r + 1) * m.n_kv_heads * hd)] for r in range(world)]
    layout = {"q_proj": (q, 0), "k_proj": (kv, 0), "v_proj": (kv, 0), "o_proj": (q, 1)}
    for name, p in m.named_parameters():
        ranges, dim = layout[name.split(".")[0]]
        _place(full.get_parameter(name), _all_gather(p, group), ranges, dim)
    if shard.out_bias is not None:
        full.o_proj.bias.copy_(shard.out_bias)


GATHERERS = {"mamba2": gather_mamba2, "attention": gather_attention}
