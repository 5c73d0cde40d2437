"""A kept walk of each model's module tree, for the checks every generate / prefill call makes on the way to its
first token: `tensor_signature(model)` (do the captured graphs still read the model's tensors?) and
`eval_mode(model)` (every module in eval mode for the call, each module's own mode back after).

Walking the tree each time cost host time while the GPU waited: for Mamba-2 1.3B (341 modules, 434 parameters) on
one CPU thread 0.76 ms for the signature (`model.parameters()`, `model.buffers()`) and 1.57 ms for model.eval()
and model.train(was). So the tree is walked once per model and after that only checked: every parent still holds
the same child under each name and every module the same number of parameter, buffer and submodule slots (a
changed tree is walked again). Then the signature is one data_ptr per slot (0.12 ms) and the mode switch one
attribute per module (0.10 ms there and back): benchmarks/host_overhead_cpu.py,
benchmarks/results/host-overhead-cpu-2026-12-07.md.

tensor_signature changes when a parameter or buffer is replaced: a .to(), a new dtype, a reassigned parameter, a
filled empty slot, a swapped or added submodule, a registered buffer.

Version history
- v1 (signature.py): tensor_signature moved from graph_registry.py, the walk kept per model.
- v2: renamed module_walk.py; eval_mode, which restores each module's own mode (model.train(was_training) after
  model.eval() set every module to the root's old mode).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

from torch import nn

_WALKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _Walk


class _Walk:
    """One model's module tree as walked: the edges (parent's submodule dict, name, child), each module's slot
    dicts with their sizes, and the (slot dict, name) of every parameter and buffer. It holds the modules' dicts
    and the submodules, never the model itself (the WeakKeyDictionary entry must not keep its key alive)."""

    def __init__(self, model: nn.Module):
        self.edges, self.sizes, self.slots = [], [], []
        self.children = list(model.modules())[1:]  # every module but the root, once each
        for module in model.modules():
            for slots in (module._modules, module._parameters, module._buffers):
                self.sizes.append((slots, len(slots)))
            self.edges.extend((module._modules, name, child) for name, child in module._modules.items())
            self.slots.extend((module._parameters, name) for name in module._parameters)
            self.slots.extend((module._buffers, name) for name in module._buffers)

    def holds(self) -> bool:
        """The tree has the shape it was walked in (same children under the same names, same slot counts)."""
        return (all(len(slots) == n for slots, n in self.sizes)
                and all(d.get(name) is child for d, name, child in self.edges))


def _walk(model: nn.Module) -> _Walk:
    walk = _WALKS.get(model)
    if walk is None or not walk.holds():
        walk = _WALKS[model] = _Walk(model)
    return walk


def tensor_signature(model: nn.Module) -> tuple:
    """The data pointers of every parameter and buffer slot of `model` (0 for an empty slot), in module order:
    equal between two calls iff the graphs captured in between still read the model's current tensors."""
    return tuple(0 if (t := d.get(name)) is None else t.data_ptr() for d, name in _walk(model).slots)


@contextmanager
def eval_mode(model: nn.Module):
    """Every module of `model` in eval mode inside the block (as model.eval()); each module's own mode back after,
    also when the block raises."""
    # Each module's `training` is a plain instance attribute: written into its __dict__, not through
    # nn.Module.__setattr__, which looks the name up in the parameter, buffer and module dicts first (Mamba-2
    # 1.3B on this CPU: 1.2 ms for the switch and the switch back that way, against 0.10 ms so)
    states = [m.__dict__ for m in (model, *_walk(model).children)]
    modes = [d["training"] for d in states]
    for d in states:
        d["training"] = False
    try:
        yield model
    finally:
        for d, mode in zip(states, modes):
            d["training"] = mode
