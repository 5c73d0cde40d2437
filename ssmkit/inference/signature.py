"""Whether a model still holds the tensors its CUDA graphs captured: `tensor_signature(model)` changes when a
parameter or buffer is replaced (a .to(), a new dtype, a reassigned parameter, a swapped or added submodule).

The decode registry and the graphed prefill check it on every generate / prefill call, on the way to the first
token. Walking the module tree for it (`model.parameters()`, `model.buffers()`) cost 0.8-1.1 ms of host time
for Mamba-2 1.3B (434 parameters) on a 2-core CPU, while the GPU waited; so the tree is walked once per model and
after that only checked: every parent still holds the same child under each name, every module the same number
of parameter, buffer and submodule slots, then one data_ptr per slot (0.17 ms at the same size).

Version history
- v1: moved from graph_registry.py; the walk kept per model (it was redone on every call).
"""

from __future__ import annotations

import weakref

from torch import nn

_WALKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _Walk


class _Walk:
    """One model's module tree as walked: the edges (parent's submodule dict, name, child), each module's slot
    dicts with their sizes, and the (slot dict, name) of every parameter and buffer. It holds the modules' dicts
    and the submodules, never the model itself (the WeakKeyDictionary entry must not keep its key alive)."""

    def __init__(self, model: nn.Module):
        self.edges, self.sizes, self.slots = [], [], []
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


def tensor_signature(model: nn.Module) -> tuple:
    """The data pointers of every parameter and buffer slot of `model` (0 for an empty slot), in module order:
    equal between two calls iff the graphs captured in between still read the model's current tensors."""
    walk = _WALKS.get(model)
    if walk is None or not walk.holds():
        walk = _WALKS[model] = _Walk(model)
    return tuple(0 if (t := d.get(name)) is None else t.data_ptr() for d, name in walk.slots)
