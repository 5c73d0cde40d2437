"""Mixture of SwiGLU experts with a top-k softmax router (Shazeer 2017; Switch, Fedus 2021; Mixtral; Jamba).

Expert weights are stored fused as in transformers 5.x: experts.gate_up_proj (n_experts, 2 d_ff, d_model) and
experts.down_proj (n_experts, d_model, d_ff); the router is router.weight (n_experts, d_model), Jamba's name.
After every call the module exposes `last_expert_counts`, `aux_loss` (the Switch load-balancing loss) and, with a
capacity factor, `last_capacity`, `last_overflow` and `last_dropped` (per expert). The forward never reads a device
value back to the host, so it does not stall the GPU and can be captured in a CUDA graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Rows of SwiGLU compute taken to cost as much as reading one expert's weights once: roughly where a bf16 matmul
# on a GPU turns from memory bound to compute bound. Only the choice between the two layouts depends on it.
ROWS_PER_EXPERT_READ = 128


class Experts(nn.Module):
    """n_experts SwiGLU MLPs held as two 3-D tensors."""

    def __init__(self, n_experts: int, d_model: int, d_ff: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * d_ff, d_model))
        self.down_proj = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        nn.init.normal_(self.gate_up_proj, std=d_model ** -0.5)
        nn.init.normal_(self.down_proj, std=d_ff ** -0.5)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert on every token: x (tokens, d_model) -> (n_experts, tokens, d_model), weights used in place."""
        gate, up = torch.matmul(x, self.gate_up_proj.transpose(1, 2)).chunk(2, dim=-1)
        return torch.matmul(F.silu(gate) * up, self.down_proj.transpose(1, 2))

    def blocks(self, x: torch.Tensor, block_expert: torch.Tensor) -> torch.Tensor:
        """Block b of x (blocks, rows, d_model) through expert block_expert[b] (blocks,) -> (blocks, rows, d_model);
        each block multiplies its own gathered copy of its expert's weights."""
        gate, up = torch.bmm(x, self.gate_up_proj[block_expert].transpose(1, 2)).chunk(2, dim=-1)
        return torch.bmm(F.silu(gate) * up, self.down_proj[block_expert].transpose(1, 2))


class MoE(nn.Module):
    """Top-k routed SwiGLU experts. Reads d_model, d_ff, n_experts, moe_top_k, moe_capacity_factor, moe_renormalize.

    Routing: p = softmax(router(x)); experts = top-k of (p + router_bias); weights = p at those experts (divided by
    their sum when moe_renormalize). `router_bias` (n_experts,), zeros by default, shifts only which experts are
    chosen, not their weights (the auxiliary-loss-free balancing of DeepSeek-V3), so a profiler can tune it.
    The capacity factor drops assignments past ceil(factor * tokens * top_k / n_experts) per expert, in token
    order, in training mode only: at inference a token's output must not depend on the other tokens of the batch,
    or prefill and token-by-token decode would differ. `set_capacity_factors` gives each expert its own factor
    (a plain attribute, neither in checkpoints nor cast by .to(dtype), so capacities stay exact); None (the
    default) uses moe_capacity_factor for all.
    An assignment over its expert's capacity is dropped, not rerouted to the token's next choice (as Switch and
    GShard do): the token keeps its other chosen experts at their unchanged weights, and a dropped top-1 token
    passes through the block's residual only.
    """

    def __init__(self, config):
        super().__init__()
        self.n_experts, self.top_k = config.n_experts, config.moe_top_k
        self.capacity_factor = config.moe_capacity_factor
        self.renormalize = config.moe_renormalize
        self.router = nn.Linear(config.d_model, config.n_experts, bias=False)
        self.experts = Experts(config.n_experts, config.d_model, config.d_ff)
        self.register_buffer("router_bias", torch.zeros(config.n_experts))
        self.capacity_factors: tuple[float, ...] | None = None
        self.last_expert_counts: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None
        self.last_capacity: torch.Tensor | None = None
        self.last_overflow: torch.Tensor | None = None
        self.last_dropped: torch.Tensor | None = None

    def set_capacity_factors(self, factors) -> None:
        """Per-expert capacity factors: a sequence or tensor of n_experts values > 0, or None for the layer's single
        moe_capacity_factor (which may itself be None: no capacity)."""
        if factors is None:
            self.capacity_factors = None
            return
        f = tuple(float(v) for v in (factors.tolist() if isinstance(factors, torch.Tensor) else factors))
        if len(f) != self.n_experts or not all(math.isfinite(v) and v > 0 for v in f):
            raise ValueError(f"factors: expected None or {self.n_experts} finite values > 0, got {factors!r}")
        self.capacity_factors = f

    def route(self, x: torch.Tensor):
        """x (tokens, d_model) -> probs (tokens, n_experts) in float32 (float64 kept), top-k index (tokens, k),
        weights (tokens, k) in x.dtype."""
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        probs = torch.softmax(self.router(x).to(ct), dim=-1)
        index = torch.topk(probs + self.router_bias.to(ct), self.top_k, dim=-1).indices
        weights = probs.gather(-1, index)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return probs, index, weights.to(x.dtype)

    def forward(self, hidden: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (batch, seqlen, d_model) or (batch, d_model) -> the same shape.

        key_padding_mask (batch, seqlen), False at padding: padded tokens are excluded from the counts and the loss.
        Every shape inside follows from hidden's shape and no value is read back to the host (no .item(), .tolist(),
        nonzero or boolean-mask indexing), in training and at inference alike; `dispatch_plan` picks the layout.
        Capacity drops (training only) zero the dropped assignments' weights, so the output and every gradient equal
        those of skipping them. Each token sums its k expert outputs in top-k order.
        """
        shape = hidden.shape
        x = hidden.reshape(-1, shape[-1])
        n_tokens = x.shape[0]
        probs, index, weights = self.route(x)
        valid = None if key_padding_mask is None else key_padding_mask.reshape(-1)
        self._record(probs, index, valid)
        flat = index.reshape(-1)  # (tokens * k,), assignment a belongs to token a // k
        per_expert = torch.zeros(self.n_experts, dtype=torch.int64, device=x.device)
        per_expert.scatter_add_(0, flat, torch.ones_like(flat))  # bincount would read its max back on a GPU
        capacity = self.expert_capacity(n_tokens)
        rank = None
        self.last_capacity = self.last_overflow = self.last_dropped = None
        if capacity is not None:
            capacity_t = self._capacity_tensor(capacity, x.device)
            self._record_capacity(per_expert, capacity, capacity_t)
            if self.training:
                rank = rank_in_expert(flat, per_expert)
                weights = weights * (rank < capacity_t[flat]).reshape(index.shape)
        rows = self.dispatch_plan(n_tokens)
        if rows is None:
            y = self.experts.dense(x)[index, torch.arange(n_tokens, device=x.device)[:, None]]  # (tokens, k, d)
        else:
            y = self._blocked(x, flat, per_expert, rank, rows).reshape(*index.shape, -1)
        return (y * weights[..., None]).sum(1).reshape(shape)

    def dispatch_plan(self, n_tokens: int) -> int | None:
        """Rows per block of the blocked layout for a call of n_tokens tokens, or None for the dense layout.

        dense: every expert on every token ((n_experts, tokens) rows), each expert's weights read once, in place.
        blocked: the n = tokens * k assignments sorted by expert into blocks of `rows` rows, each block one
        expert's (its last block zero-padded), block count bounded statically by n_blocks; each block gathers a
        copy of its expert's weights. Cost in reads of one expert's weights, R = ROWS_PER_EXPERT_READ: dense
        n_experts + n_experts * tokens / R; blocked 3 per block (gather, write, read) + padded rows / R, lowest at
        rows ~ sqrt(3 n R / n_experts), taken at most ceil(n / n_experts). The cheaper plan wins: a decode step
        of one token gathers only its k experts (one row per block) and a batch of a few tokens runs every expert
        on it, while a long prefill or training batch does the routed work plus padding, with activations of
        about n rows rather than n_experts * tokens.
        """
        nk, e = n_tokens * self.top_k, self.n_experts
        if nk == 0:
            return None
        rows = max(1, min(-(-nk // e), round(math.sqrt(3 * nk * ROWS_PER_EXPERT_READ / e))))
        blocks = n_blocks(nk, e, rows)
        dense = e + e * n_tokens / ROWS_PER_EXPERT_READ
        blocked = 3 * blocks + blocks * rows / ROWS_PER_EXPERT_READ
        return rows if blocked < dense else None

    def _blocked(self, x: torch.Tensor, flat: torch.Tensor, per_expert: torch.Tensor, rank: torch.Tensor | None,
                 rows: int) -> torch.Tensor:
        """x (tokens, d_model), flat (tokens * k,) expert of each assignment, per_expert (n_experts,) counts ->
        (tokens * k, d_model): each assignment's expert output, computed in expert-sorted blocks of `rows` rows."""
        nk = flat.shape[0]
        nb = n_blocks(nk, self.n_experts, rows)
        if rank is None:
            rank = rank_in_expert(flat, per_expert)
        blocks_per_expert = (per_expert + rows - 1) // rows
        block_end = torch.cumsum(blocks_per_expert, 0)
        slot = (block_end - blocks_per_expert)[flat] * rows + rank  # (tokens * k,) row in the padded buffer
        block_ids = torch.arange(nb, device=x.device)
        block_expert = torch.searchsorted(block_end, block_ids, right=True).clamp(max=self.n_experts - 1)
        # buffer row -> token; rows no assignment fills point at an appended zero row (SwiGLU(0) = 0)
        source = torch.full((nb * rows,), x.shape[0], dtype=torch.int64, device=x.device)
        source.scatter_(0, slot, torch.arange(nk, device=x.device) // self.top_k)
        padded = torch.cat([x, x.new_zeros(1, x.shape[1])])[source].reshape(nb, rows, -1)
        return self.experts.blocks(padded, block_expert).reshape(nb * rows, -1)[slot]

    def expert_capacity(self, n_tokens: int) -> list[int] | None:
        """Assignments each expert may take in a call of n_tokens tokens, ceil(factor_e * n_tokens * top_k /
        n_experts) per expert e, whatever the mode (None without any factor)."""
        if self.capacity_factors is not None:
            factors = self.capacity_factors
        elif self.capacity_factor is not None:
            factors = [self.capacity_factor] * self.n_experts
        else:
            return None
        return [capacity_from_factor(f, n_tokens, self.top_k, self.n_experts) for f in factors]

    def _capacity_tensor(self, capacity: list[int], device) -> torch.Tensor:
        """capacity as an int64 tensor on `device`, written by fills from host scalars: a copy of a host tensor
        would synchronize the stream."""
        if len(set(capacity)) == 1:
            return torch.full((self.n_experts,), capacity[0], dtype=torch.int64, device=device)
        out = torch.empty(self.n_experts, dtype=torch.int64, device=device)
        for e, c in enumerate(capacity):
            out[e:e + 1].fill_(c)  # a fill kernel with c as its argument; out[e] = c may copy a host tensor
        return out

    def _record_capacity(self, per_expert: torch.Tensor, capacity: list[int], capacity_t: torch.Tensor) -> None:
        """last_capacity (n_experts,) int64 on the CPU; last_overflow (assignments past capacity, padding included as
        it takes capacity too) and last_dropped (the overflow in training mode, zeros at inference), (n_experts,)
        int64 on the layer's device: reading them is the caller's synchronization, not the forward's."""
        self.last_capacity = torch.tensor(capacity, dtype=torch.int64)
        self.last_overflow = (per_expert - capacity_t).clamp(min=0)
        self.last_dropped = self.last_overflow.clone() if self.training else torch.zeros_like(self.last_overflow)

    def _record(self, probs: torch.Tensor, index: torch.Tensor, valid: torch.Tensor | None) -> None:
        """Per-expert assignment counts and the load-balancing loss n_experts * sum_e f_e P_e over real tokens,
        f_e = assignments to e per token (sums to top_k, as transformers' load_balancing_loss_func counts them),
        P_e = mean router probability of e."""
        w = torch.ones_like(probs[:, 0]) if valid is None else valid.to(probs.dtype)
        counts = torch.zeros(self.n_experts, device=probs.device, dtype=probs.dtype)
        counts.scatter_add_(0, index.reshape(-1), w[:, None].expand(-1, self.top_k).reshape(-1))
        n = w.sum().clamp(min=1.0)
        self.last_expert_counts = counts.detach().round().long()
        self.aux_loss = self.n_experts * torch.sum((counts / n) * (probs * w[:, None]).sum(0) / n)


def rank_in_expert(flat: torch.Tensor, per_expert: torch.Tensor) -> torch.Tensor:
    """flat (assignments,) expert of each assignment, per_expert (n_experts,) their counts -> (assignments,) how
    many earlier assignments (in token order) chose the same expert."""
    order = torch.argsort(flat, stable=True)  # grouped by expert, token order kept inside a group
    starts = torch.cumsum(per_expert, 0) - per_expert
    sorted_rank = torch.arange(flat.shape[0], device=flat.device) - starts[flat[order]]
    return torch.empty_like(flat).scatter_(0, order, sorted_rank)


def n_blocks(n_assignments: int, n_experts: int, rows: int) -> int:
    """Static bound on the blocks of `rows` rows that hold n_assignments split over n_experts in any way:
    sum_e ceil(c_e / rows) <= (n + used * (rows - 1)) // rows with used <= min(n_experts, n), and <= n."""
    used = min(n_experts, n_assignments)
    return min(n_assignments, (n_assignments + used * (rows - 1)) // rows)


def capacity_from_factor(factor: float, n_tokens: int, top_k: int, n_experts: int) -> int:
    """ceil(factor * n_tokens * top_k / n_experts): an expert's share of the call's assignments, times factor."""
    return math.ceil(factor * n_tokens * top_k / n_experts)
