"""Expert parallelism for profiling: each rank of a torch.distributed group holds a contiguous block of a MoE layer's
experts; tokens travel to the rank of their expert and back through all-to-all (gloo on CPU, NCCL on GPU).

Every all-to-all goes through `ExpertParallelMoE.exchange`, which the Profiler times as an "all_to_all" event and
sums into moe_routing.exchange_ns, so the exchange time is measured, not modelled. Routing is the layer's own
(MoE.route, router replicated), and each assignment is computed by the same expert function as in MoE.forward,
so the output equals the single-process layer up to the order of the final sums.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ssmkit.layers.moe import MoE


class ExpertParallelMoE(nn.Module):
    """The experts [rank * n_local, (rank + 1) * n_local) of `moe` on this rank; the router on every rank.

    Attributes the Profiler reads (n_experts, top_k, last_expert_counts, last_capacity, last_overflow,
    last_dropped) mirror MoE's. Inference only: capacity is reported, never enforced (last_dropped is zeros).
    """

    def __init__(self, moe: MoE, group=None):
        super().__init__()
        self.group = group
        self.world, self.rank = dist.get_world_size(group), dist.get_rank(group)
        if moe.n_experts % self.world != 0:
            raise ValueError(f"n_experts: expected a multiple of the world size {self.world}, got {moe.n_experts}")
        self.n_experts, self.top_k = moe.n_experts, moe.top_k
        self.n_local = moe.n_experts // self.world
        self.capacity_factor = moe.capacity_factor
        self.renormalize = moe.renormalize
        self.router = moe.router
        self.register_buffer("router_bias", moe.router_bias)
        first = self.rank * self.n_local
        self.gate_up_proj = nn.Parameter(moe.experts.gate_up_proj.detach()[first:first + self.n_local].clone())
        self.down_proj = nn.Parameter(moe.experts.down_proj.detach()[first:first + self.n_local].clone())
        self._moe = [moe]  # routing is delegated, the module itself not registered (its experts are not held)
        self.last_expert_counts: torch.Tensor | None = None
        self.aux_loss: torch.Tensor | None = None
        self.last_capacity = self.last_overflow = self.last_dropped = None

    def route(self, x: torch.Tensor):
        """MoE.route of the wrapped layer: probs, top-k index (tokens, k), weights (tokens, k)."""
        return self._moe[0].route(x)

    def exchange(self, send: torch.Tensor, send_splits: list[int], recv_splits: list[int]) -> torch.Tensor:
        """One all-to-all: send (sum(send_splits), ...) rows, send_splits[r] of them to rank r; returns the
        (sum(recv_splits), ...) rows received, in rank order."""
        recv = send.new_empty((sum(recv_splits),) + tuple(send.shape[1:]))
        dist.all_to_all_single(recv, send.contiguous(), recv_splits, send_splits, group=self.group)
        return recv

    def _local_expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = nn.functional.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
        return nn.functional.linear(nn.functional.silu(gate) * up, self.down_proj[e])

    def _record(self, probs: torch.Tensor, flat: torch.Tensor, key_padding_mask) -> None:
        """last_expert_counts over real tokens, and the Switch load-balancing loss of this rank's tokens (MoE's
        definition), which LanguageModel collects after every forward."""
        w = probs.new_ones(probs.shape[0]) if key_padding_mask is None else key_padding_mask.reshape(-1).to(probs)
        counts = torch.zeros(self.n_experts, dtype=probs.dtype, device=probs.device)
        counts.scatter_add_(0, flat, w.repeat_interleave(self.top_k))
        n = w.sum().clamp(min=1.0)
        self.last_expert_counts = counts.round().long()
        self.aux_loss = self.n_experts * torch.sum((counts / n) * (probs * w[:, None]).sum(0) / n)

    def _record_capacity(self, per_expert: torch.Tensor, n_tokens: int) -> None:
        """last_capacity / last_overflow of this rank's tokens under the wrapped MoE's factors; nothing dropped."""
        capacity = self._moe[0].expert_capacity(n_tokens)
        if capacity is None:
            self.last_capacity = self.last_overflow = self.last_dropped = None
            return
        self.last_capacity = torch.tensor(capacity, dtype=torch.int64)
        self.last_overflow = (per_expert.cpu() - self.last_capacity).clamp(min=0)
        self.last_dropped = torch.zeros_like(self.last_overflow)

    def forward(self, hidden: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (batch, seqlen, d_model) or (batch, d_model) -> the same shape. Every rank of the group must
        call it the same number of times (the all-to-alls are collective)."""
        shape = hidden.shape
        x = hidden.reshape(-1, shape[-1])
        probs, index, weights = self.route(x)
        flat = index.reshape(-1)  # (tokens * k,): assignment a is token a // k
        self._record(probs, flat, key_padding_mask)
        # 1. counts per (destination rank, local expert), so receivers know how their rows split over experts
        order = torch.argsort(flat, stable=True)  # grouped by expert, hence by destination rank
        per_expert = torch.bincount(flat, minlength=self.n_experts)
        self._record_capacity(per_expert, x.shape[0])
        recv_counts = self.exchange(per_expert.reshape(self.world, self.n_local), [1] * self.world,
                                    [1] * self.world)  # (world, n_local): rows from each source rank
        send_splits = per_expert.reshape(self.world, self.n_local).sum(1).tolist()
        recv_splits = recv_counts.sum(1).tolist()
        # 2. dispatch the token vectors, 3. run the local experts, 4. combine back to the source ranks
        received = self.exchange(x[order // self.top_k], send_splits, recv_splits)
        outputs = torch.empty_like(received)
        start = 0
        for source in range(self.world):
            for e in range(self.n_local):
                n = int(recv_counts[source, e])
                if n:
                    outputs[start:start + n] = self._local_expert(e, received[start:start + n])
                start += n
        returned = self.exchange(outputs, recv_splits, send_splits)
        out = torch.zeros_like(x)
        out.index_add_(0, order // self.top_k, returned * weights.reshape(-1)[order, None])
        return out.reshape(shape)


def shard_experts(model, group=None) -> list[int]:
    """Replaces every MoE feed-forward of `model` with an ExpertParallelMoE over `group` (in place); returns the
    indices of the replaced layers."""
    replaced = []
    for block in model.layers:
        if getattr(block, "ff_kind", None) == "moe" and isinstance(block.ff, MoE):
            block.ff = ExpertParallelMoE(block.ff, group)
            replaced.append(block.layer_idx)
    return replaced
