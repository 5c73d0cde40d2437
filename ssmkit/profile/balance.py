"""Imbalance penalty: move each MoE layer's router bias away from the experts it overloads, from observed load.

    bias_e <- bias_e - lr * (load_e / mean_e' load_e' - 1)

MoE.route adds router_bias to the routing probabilities before top-k, so the bias changes which experts are
chosen, not their mixing weights (the auxiliary-loss-free balancing of DeepSeek-V3, here in proportional form).
Loads come from a profiled run's moe_routing table, or live from each call's last_expert_counts.
"""

from __future__ import annotations

import torch

from .store import TraceStore

_LOAD = """
SELECT layer_idx, e - 1 AS expert, sum(expert_counts[e]) AS load
FROM (SELECT layer_idx, expert_counts, generate_subscripts(expert_counts, 1) AS e
      FROM moe_routing WHERE run_id = ? {phase})
GROUP BY ALL ORDER BY ALL
"""


def expert_load(store: TraceStore, run_id: int | None = None, *, phase: str | None = None) -> dict[int, list[int]]:
    """Assignments per expert of each MoE layer, summed over the calls of run `run_id` (the newest when None),
    optionally only over calls of `phase`: {layer_idx: [load of expert 0, 1, ...]}."""
    run_id = store.check_run(run_id)
    where = ""
    params = [run_id]
    if phase is not None:
        where = "AND call_id IN (SELECT call_id FROM events WHERE run_id = ? AND phase = ?)"
        params += [run_id, phase]
    loads: dict[int, list[int]] = {}
    for layer_idx, expert, load in store.query(_LOAD.format(phase=where), params)[1]:
        row = loads.setdefault(layer_idx, [])
        row.extend([0] * (expert + 1 - len(row)))
        row[expert] = int(load)
    return loads


def penalized_bias(bias: torch.Tensor, load, lr: float) -> torch.Tensor:
    """bias (n_experts,) minus lr * (load / mean(load) - 1); unchanged when nothing was routed."""
    load = torch.as_tensor(load, dtype=torch.float64, device=bias.device)
    if load.shape != bias.shape:
        raise ValueError(f"load: expected {tuple(bias.shape)} per-expert counts, got shape {tuple(load.shape)}")
    mean = load.mean()
    if mean <= 0:
        return bias.clone()
    return (bias.double() - lr * (load / mean - 1)).to(bias.dtype)


def apply_imbalance_penalty(model, loads: dict[int, list[int]], lr: float = 0.05) -> dict[int, torch.Tensor]:
    """Updates router_bias of every MoE layer of `model` named in `loads` (from expert_load) in place; returns
    the new biases by layer index."""
    if lr < 0:
        raise ValueError(f"lr: expected >= 0, got {lr}")
    layers = {block.layer_idx: block.ff for block in model.layers if getattr(block, "ff_kind", None) == "moe"}
    unknown = sorted(set(loads) - set(layers))
    if unknown:
        raise ValueError(f"loads: layers {unknown} are not MoE layers of the model (MoE layers: {sorted(layers)})")
    out = {}
    with torch.no_grad():
        for layer_idx, load in loads.items():
            moe = layers[layer_idx]
            moe.router_bias.copy_(penalized_bias(moe.router_bias, load, lr))
            out[layer_idx] = moe.router_bias.detach().clone()
    return out


class OnlineImbalancePenalty:
    """Context manager: after every call of every MoE layer, apply the penalty with that call's counts.

    Use on calibration traffic; the biases stay as tuned after exit.
    """

    def __init__(self, model, lr: float = 0.05):
        if lr < 0:
            raise ValueError(f"lr: expected >= 0, got {lr}")
        self.model, self.lr = model, lr
        self._handles = []

    def _hook(self, moe, _args, _output):
        if moe.last_expert_counts is not None:
            with torch.no_grad():
                moe.router_bias.copy_(penalized_bias(moe.router_bias, moe.last_expert_counts, self.lr))

    def __enter__(self) -> "OnlineImbalancePenalty":
        for block in self.model.layers:
            if getattr(block, "ff_kind", None) == "moe":
                self._handles.append(block.ff.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
