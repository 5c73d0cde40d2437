"""The trainer's three ways of using several ranks (TrainConfig.parallel): "data" (DDP), "tensor" (mixer heads
split over ranks) and "sequence" (each row's positions split over ranks, Mamba-2 only).

Tensor and sequence parallel train a view of the full LanguageModel: the view shares the embedding, norms and
feed-forwards with it and replaces each mixer, so checkpoints, evaluation and the HF export keep using the full
model (in tensor parallel after gather_full_weights and gather_optimizer_state have copied the shards back).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from .distributed import DistContext
from .sequence_parallel import SequenceParallelMamba2
from .tensor_parallel import GATHERERS, SHARDERS


def _view(model: nn.Module, wrap) -> nn.Module:
    """A shallow copy of a LanguageModel whose layers are shallow copies with mixer = wrap(i, layer)."""
    view = copy.copy(model)
    view._modules = dict(model._modules)
    layers = []
    for i, layer in enumerate(model.layers):
        new = copy.copy(layer)
        new._modules = dict(layer._modules)
        new.mixer = wrap(i, layer)
        layers.append(new)
    view.layers = nn.ModuleList(layers)
    return view


def tensor_parallel_view(model: nn.Module, ctx: DistContext, group=None) -> nn.Module:
    """The model with each mixer replaced by this rank's shard (shard_tensor_parallel's layout); the full model's
    mixers are left as they were and go stale until gather_full_weights. ValueError for other mixer kinds."""
    def wrap(i, layer):
        if layer.mixer_kind not in SHARDERS:
            raise ValueError(f"mixers[{i}]: parallel 'tensor' supports {sorted(SHARDERS)}, got "
                             f"{layer.mixer_kind!r}")
        return SHARDERS[layer.mixer_kind](layer.mixer, ctx.rank, ctx.world_size, group)
    return _view(model, wrap)


def sequence_parallel_view(model: nn.Module, group=None) -> nn.Module:
    """The model with each Mamba-2 mixer run on this rank's slice of the sequence (SequenceParallelMamba2, which
    holds the full model's own mixer, so the parameters are shared). ValueError for other mixer kinds."""
    def wrap(i, layer):
        if layer.mixer_kind != "mamba2":
            raise ValueError(f"mixers[{i}]: parallel 'sequence' supports 'mamba2', got {layer.mixer_kind!r}")
        return SequenceParallelMamba2(layer.mixer, group)
    return _view(model, wrap)


def gather_full_weights(view: nn.Module, model: nn.Module, group=None) -> None:
    """Copies the tensor parallel shards of `view` into the full `model`'s mixers on every rank."""
    for layer, full in zip(view.layers, model.layers):
        GATHERERS[full.mixer_kind](layer.mixer, full.mixer, group)


def sharded_parameters(view: nn.Module) -> set[int]:
    """ids of the parameters that tensor parallel splits over ranks (those inside a shard's rank-local mixer)."""
    return {id(p) for layer in view.layers for p in layer.mixer.inner.parameters()}


def tensor_parallel_grad_norm(params: list, sharded: set[int], group=None) -> torch.Tensor:
    """The 2-norm of the full model's gradient: split parameters' squares are summed over ranks, replicated
    ones (equal on every rank) are counted once."""
    local = torch.zeros((), dtype=torch.float64, device=params[0].device)
    shared = torch.zeros_like(local)
    for p in params:
        sq = p.grad.detach().double().pow(2).sum()
        if id(p) in sharded:
            local += sq
        else:
            shared += sq
    dist.all_reduce(local, group=group)
    return (local + shared).sqrt()


def sum_gradients(params: list, group=None) -> None:
    """Adds every parameter's gradient over ranks (sequence parallel: each rank's is its slice's part)."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)


def scatter_full_weights(view: nn.Module, model: nn.Module, ctx: DistContext, group=None) -> None:
    """Copies this rank's shards of the full `model`'s mixers into `view` (after loading a checkpoint into
    `model`), keeping the view's parameter objects, which the optimizer holds."""
    for layer, full in zip(view.layers, model.layers):
        local = SHARDERS[full.mixer_kind](full.mixer, ctx.rank, ctx.world_size, group)
        with torch.no_grad():
            for p, q in zip(layer.mixer.parameters(), local.parameters()):
                p.copy_(q)


def _with_values(module: nn.Module, values: dict) -> nn.Module:
    """A deep copy of `module` whose parameters hold values[original parameter] (an optimizer moment, say), so
    the shard and gather functions move moments exactly as they move weights."""
    twin = copy.deepcopy(module)
    for p, q in zip(module.parameters(), twin.parameters()):
        q.data = values[p].detach().clone()
    return twin


def gather_optimizer_state(view: nn.Module, model: nn.Module, optimizer, full_optimizer, group=None) -> None:
    """Fills `full_optimizer` (AdamW over `model`) with the state of `optimizer` (AdamW over the tensor parallel
    `view`): replicated parameters' state is copied, split parameters' moments are gathered like their weights.
    The result is the optimizer a single-process run would hold, so checkpoints do not depend on the mode."""
    state, full = optimizer.state, full_optimizer.state
    full.clear()
    for g, h in zip(full_optimizer.param_groups, optimizer.param_groups):
        g["lr"] = h["lr"]
    replicated = set(model.parameters())
    for p in view.parameters():
        if p in replicated and p in state:
            full[p] = {k: v.clone() for k, v in state[p].items()}
    for layer, whole in zip(view.layers, model.layers):
        shard, first = layer.mixer, next(layer.mixer.parameters())
        for key in (state[first] if first in state else {}):
            if key == "step":
                for p in whole.mixer.parameters():
                    full[p]["step"] = state[first]["step"].clone()
                continue
            target = copy.deepcopy(whole.mixer)
            GATHERERS[whole.mixer_kind](_with_values(shard, {p: state[p][key] for p in shard.parameters()}),
                                        target, group)
            for p, q in zip(whole.mixer.parameters(), target.parameters()):
                full[p][key] = q.detach().clone()


def scatter_optimizer_state(view: nn.Module, model: nn.Module, full_optimizer, optimizer, ctx: DistContext,
                            group=None) -> None:
    """The inverse of gather_optimizer_state: this rank's part of `full_optimizer`'s state into `optimizer`."""
    state, full = optimizer.state, full_optimizer.state
    state.clear()
    replicated = set(model.parameters())
    for p in view.parameters():
        if p in replicated and p in full:
            state[p] = {k: v.clone() for k, v in full[p].items()}
    for layer, whole in zip(view.layers, model.layers):
        shard, first = layer.mixer, next(whole.mixer.parameters())
        for key in (full[first] if first in full else {}):
            if key == "step":
                for p in shard.parameters():
                    state[p]["step"] = full[first]["step"].clone()
                continue
            twin = _with_values(whole.mixer, {p: full[p][key] for p in whole.mixer.parameters()})
            local = SHARDERS[whole.mixer_kind](twin, ctx.rank, ctx.world_size, group)
            for p, q in zip(shard.parameters(), local.parameters()):
                state[p][key] = q.detach().clone()
