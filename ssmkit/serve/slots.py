"""A fixed pool of decode-state slots for continuous batching: one row per sequence in every layer's state.

SSM layers (Mamba, Mamba-2, S4) keep a constant-size state per row; attention layers keep a KV cache with a length
per row (KVCache per_row), so rows at different positions decode together in one `model.step`. Views share the
pool's storage: a prefill writes straight into its row and a decode step updates the active prefix in place.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from ssmkit.layers.attention import AttentionState
from ssmkit.ops.attention.kv_cache import KVCache


class SlotPool:
    """Decode state for `n_slots` sequences of up to `max_len` positions each (prompt plus new tokens).

    state: one state per layer with batch n_slots, as LanguageModel.allocate_state returns it, except that the
    attention layers' KV caches are per-row. lengths (n_slots,) int64: positions held by each row.
    """

    def __init__(self, model, n_slots: int, max_len: int, dtype: torch.dtype | None = None, device=None):
        if n_slots < 1 or max_len < 1:
            raise ValueError(f"n_slots, max_len: expected >= 1, got n_slots={n_slots}, max_len={max_len}")
        ref = model.embeddings.weight
        dtype = ref.dtype if dtype is None else dtype
        device = ref.device if device is None else device
        self.n_slots, self.max_len = n_slots, max_len
        self.state = [layer.mixer.allocate_state(n_slots, max_len, dtype, device, per_row=True)
                      if layer.mixer_kind == "attention" else layer.allocate_state(n_slots, max_len, dtype, device)
                      for layer in model.layers]
        self.lengths = torch.zeros(n_slots, dtype=torch.int64, device=device)

    def fresh_row(self, slot: int) -> list:
        """Per-layer states over row `slot` alone (batch 1), emptied: SSM rows zeroed, the KV cache at length 0
        and shared-length (not per-row), so a prefill through them computes exactly what a new batch-1 cache
        computes, while writing into the pool."""
        rows = slice(slot, slot + 1)
        views = []
        for s in self.state:
            if isinstance(s, AttentionState):
                views.append(AttentionState(kv=_kv_view(s.kv, rows, None, 0), key_mask=s.key_mask[rows]))
            else:
                view = _row_view(s, rows)
                for t in _tensor_fields(view):
                    t.zero_()
                views.append(view)
        self.lengths[slot] = 0
        return views

    def set_length(self, slot: int, length: int) -> None:
        """Records that row `slot` holds `length` positions (after its prefill)."""
        if not 0 <= length <= self.max_len:
            raise ValueError(f"length: expected 0 <= length <= {self.max_len} (max_len), got {length}")
        self.lengths[slot] = length

    def prefix(self, n: int) -> list:
        """Per-layer states over rows [0, n) for one model.step; call `advance(n, idle)` after the step."""
        rows = slice(0, n)
        lengths = self.lengths[rows]
        views = []
        for s in self.state:
            if isinstance(s, AttentionState):
                views.append(AttentionState(kv=_kv_view(s.kv, rows, lengths, None), key_mask=s.key_mask[rows]))
            else:
                views.append(_row_view(s, rows))
        return views

    def advance(self, n: int, idle: list[int]) -> None:
        """After a step over rows [0, n): every row gained one position; idle rows (no sequence) go back to
        length 0 so their throwaway positions never accumulate."""
        self.lengths[:n] += 1
        if idle:
            self.lengths[idle] = 0

    def release(self, slot: int) -> None:
        """Frees row `slot`: its positions no longer count (storage is overwritten by the next prefill)."""
        self.lengths[slot] = 0


def _tensor_fields(state) -> list[torch.Tensor]:
    return [getattr(state, f.name) for f in dataclasses.fields(state)
            if isinstance(getattr(state, f.name), torch.Tensor)]


def _row_view(state, rows: slice):
    """An SSM state (MambaState, Mamba2State, S4State: tensors with the batch first) over `rows`, sharing storage."""
    values = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    return type(state)(**{k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in values.items()})


def _kv_view(kv: KVCache, rows: slice, lengths: torch.Tensor | None, length: int | None) -> KVCache:
    """A KVCache over `rows` of `kv`'s storage: per-row with `lengths` (a tensor), or shared with `length`.

    A shallow copy with its tensors replaced by views: KVCache.append writes through them into the pool and
    rebinds only the copy's `length`/`lengths`, which the pool tracks itself.
    """
    view = copy.copy(kv)
    view.batch = rows.stop - rows.start
    view.k, view.v = kv.k[rows], kv.v[rows]
    if kv.k_scale is not None:
        view.k_scale, view.v_scale = kv.k_scale[rows], kv.v_scale[rows]
    view.per_row = lengths is not None
    view.lengths = lengths
    view.length = int(lengths.max()) if lengths is not None else length
    return view
