"""Peak bytes of live tensors created inside a region, on any device (CPU included).

CPU has no allocator statistics like CUDA's max_memory_allocated, so this tracks every tensor that torch creates
inside the region through a dispatch mode and frees it from the count when its storage dies.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorMemory(TorchDispatchMode):
    """Context manager: `with PeakTensorMemory() as m: f()`, then `m.peak_bytes` (tensors created inside only)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak_bytes = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # An output sharing an input's storage (a view, an in-place op) allocated nothing: weights viewed or
        # transposed inside the region must not count as new memory.
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self._seen or key in inputs or storage.nbytes() == 0:
            return
        self._seen.add(key)
        nbytes = storage.nbytes()
        self.live += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes
