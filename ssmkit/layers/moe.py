"""Mixture of SwiGLU experts with a top-k softmax router (Shazeer 2017; Switch, Fedus 2021; Mixtral; Jamba).

Expert weights are stored fused as in transformers 5.x: experts.gate_up_proj (n_experts, 2 d_ff, d_model) and
experts.down_proj (n_experts, d_model, d_ff); the router is router.weight (n_experts, d_model), Jamba's name.
After every call the module exposes `last_expert_counts`, `aux_loss` (the Switch load-balancing loss) and, with a
capacity factor, `last_capacity`, `last_overflow` and `last_dropped` (per expert).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Experts(nn.Module):
    """n_experts SwiGLU MLPs held as two 3-D tensors."""

    def __init__(self, n_experts: int, d_model: int, d_ff: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * d_ff, d_model))
        self.down_proj = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        nn.init.normal_(self.gate_up_proj, std=d_model ** -0.5)
        nn.init.normal_(self.down_proj, std=d_ff ** -0.5)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on x (tokens, d_model) -> (tokens, d_model); gate first, then up, as transformers stores them."""
        gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj[e])


class MoE(nn.Module):
    """Top-k routed SwiGLU experts. Reads d_model, d_ff, n_experts, moe_top_k, moe_capacity_factor, moe_renormalize.

    Routing: p = softmax(router(x)); experts = top-k of (p + router_bias); weights = p at those experts (divided by
    their sum when moe_renormalize). `router_bias` (n_experts,), zeros by default, shifts only which experts are
    chosen, not their weights (the auxiliary-loss-free balancing of DeepSeek-V3), so a profiler can tune it.
    The capacity factor drops assignments past ceil(factor * tokens * top_k / n_experts) per expert, in token
    order, in training mode only: at inference a token's output must not depend on the other tokens of the batch,
    or prefill and token-by-token decode would differ. `set_capacity_factors` gives each expert its own factor
    (a plain attribute, neither in checkpoints nor cast by .to(dtype), so capacities stay exact); None (the default) uses moe_capacity_factor for all.
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
        """hidden (batch, seqlen, d_model) -> (batch, seqlen, d_model).

        key_padding_mask (batch, seqlen), False at padding: padded tokens are excluded from the counts and the loss.
        """
        shape = hidden.shape
        x = hidden.reshape(-1, shape[-1])
        probs, index, weights = self.route(x)
        valid = None if key_padding_mask is None else key_padding_mask.reshape(-1)
        self._record(probs, index, valid)
        flat = index.reshape(-1)  # (tokens * k,), assignment a belongs to token a // k
        order = torch.argsort(flat, stable=True)  # grouped by expert, token order kept inside a group
        per_expert = torch.bincount(flat, minlength=self.n_experts).tolist()
        capacity = self.expert_capacity(x.shape[0])
        self._record_capacity(per_expert, capacity)
        enforce = capacity is not None and self.training
        out = torch.zeros_like(x)
        for e, assignments in enumerate(order.split(per_expert)):
            if enforce:
                assignments = assignments[:capacity[e]]
            if assignments.numel() == 0:
                continue
            tokens = assignments // self.top_k
            y = self.experts.expert(e, x[tokens]) * weights.reshape(-1)[assignments, None]
            out.index_add_(0, tokens, y)
        return out.reshape(shape)

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

    def _record_capacity(self, per_expert: list[int], capacity: list[int] | None) -> None:
        """last_capacity, last_overflow (assignments past capacity, padding included as it takes capacity too) and
        last_dropped (the overflow in training mode, zeros at inference), each (n_experts,) int64 on the CPU."""
        if capacity is None:
            self.last_capacity = self.last_overflow = self.last_dropped = None
            return
        self.last_capacity = torch.tensor(capacity, dtype=torch.int64)
        self.last_overflow = (torch.tensor(per_expert, dtype=torch.int64) - self.last_capacity).clamp(min=0)
        self.last_dropped = self.last_overflow.clone() if self.training else torch.zeros_like(self.last_overflow)

    def _record(self, probs: torch.Tensor, index: torch.Tensor, valid: torch.Tensor | None) -> None:
        """Per-expert assignment counts and the load-balancing loss n_experts * sum_e f_e P_e over real tokens,
        f_e = assignments to e per token (sums to top_k, as transformers' load_balancing_loss_func counts them),
        P_e = mean router probability of e."""
        w = torch.ones_like(probs[:, 0]) if valid is None else valid.to(probs.dtype)
        counts = torch.zeros(self.n_experts, device=probs.device, dtype=probs.dtype)
        counts.scatter_add_(0, index.reshape(-1), w.repeat_interleave(self.top_k))
        n = w.sum().clamp(min=1.0)
        self.last_expert_counts = counts.detach().round().long()
        self.aux_loss = self.n_experts * torch.sum((counts / n) * (probs * w[:, None]).sum(0) / n)


def capacity_from_factor(factor: float, n_tokens: int, top_k: int, n_experts: int) -> int:
    """ceil(factor * n_tokens * top_k / n_experts): an expert's share of the call's assignments, times factor."""
    return math.ceil(factor * n_tokens * top_k / n_experts)
