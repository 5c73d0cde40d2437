"""A fixed pool of decode-state slots for continuous batching: one row per sequence in every layer's state.

SSM layers (Mamba, Mamba-2, S4) keep a constant-size state per row; attention layers keep a KV cache with a length
per row (KVCache per_row), so rows at different positions decode together in one `model.step`. Several prompts are
prefilled in one left-padded forward and their rows copied into their slots, padding included (masked, as in
ssmkit.inference.batch); a lone prompt is prefilled straight into its row, and a decode step updates the prefix.
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
        self.n_slots, self.max_len, self.dtype = n_slots, max_len, dtype
        self.model = model
        self.state = [layer.mixer.allocate_state(n_slots, max_len, dtype, device, per_row=True)
                      if layer.mixer_kind == "attention" else layer.allocate_state(n_slots, max_len, dtype, device)
                      for layer in model.layers]
        self.lengths = torch.zeros(n_slots, dtype=torch.int64, device=device)
        self.padded = [False] * n_slots  # row holds left padding (masked keys): decode must apply key_mask

    def prefill(self, prompts: list[list[int]], slots: list[int]) -> torch.Tensor:
        """Prefills prompts[b] into row slots[b] in one forward; returns logits (len(prompts), vocab) at each
        prompt's last token. The caller runs it under torch.no_grad().

        One prompt goes straight into its row (no padding). Several are left-padded to the longest, P tokens,
        with a key_padding_mask, run through a fresh batch state and copied into their rows with the padding:
        row slots[b] then holds P positions, the first P - len(prompts[b]) masked, and its RoPE angles are shifted
        by that pad count, which leaves every attention score unchanged (scores depend on position differences;
        padding leaves SSM states untouched, see layers/padding.py). So each row continues exactly as the prompt
        alone would, up to rounding; it needs P + new tokens - 1 <= max_len positions.
        """
        device = self.lengths.device
        if len(prompts) == 1:
            ids = torch.tensor(prompts, dtype=torch.int64, device=device)
            logits = self.model(ids, self.fresh_row(slots[0]), logits_to_keep=1)[:, -1]
            self.set_length(slots[0], ids.shape[1])
            return logits
        longest = max(len(p) for p in prompts)
        if longest > self.max_len:
            raise ValueError(f"prompts: expected at most {self.max_len} (max_len) tokens, got {longest}")
        ids = torch.zeros(len(prompts), longest, dtype=torch.int64)
        mask = torch.zeros(len(prompts), longest, dtype=torch.bool)
        for b, p in enumerate(prompts):
            ids[b, longest - len(p):] = torch.tensor(p, dtype=torch.int64)
            mask[b, longest - len(p):] = True
        batch_state = self.model.allocate_state(len(prompts), longest, self.dtype, device)
        logits = self.model(ids.to(device), batch_state, key_padding_mask=mask.to(device), logits_to_keep=1)
        self._load_rows(batch_state, slots, longest, [len(p) < longest for p in prompts])
        return logits[:, -1]

    def _load_rows(self, batch_state: list, slots: list[int], length: int, padded: list[bool]) -> None:
        """Copies row b of every layer of `batch_state` (a prefilled allocate_state, `length` positions) into row
        slots[b] of the pool."""
        rows = torch.tensor(slots, dtype=torch.int64, device=self.lengths.device)
        for s, src in zip(self.state, batch_state):
            if isinstance(s, AttentionState):
                s.key_mask[rows] = True
                s.key_mask[rows, :length] = src.key_mask[:, :length]
                pairs = [(s.kv.k, src.kv.k), (s.kv.v, src.kv.v)]
                if s.kv.k_scale is not None:
                    pairs += [(s.kv.k_scale, src.kv.k_scale), (s.kv.v_scale, src.kv.v_scale)]
                for dst, new in pairs:
                    dst[rows, :length] = new[:, :length].to(dst.dtype)
            else:
                for dst, new in zip(_tensor_fields(s), _tensor_fields(src)):
                    dst[rows] = new.to(dst.dtype)
        self.lengths[rows] = length
        for slot, pad in zip(slots, padded):
            self.padded[slot] = pad

    def fresh_row(self, slot: int) -> list:
        """Per-layer states over row `slot` alone (batch 1), emptied: SSM rows zeroed, the KV cache at length 0
        and shared-length (not per-row), so a prefill through them computes exactly what a new batch-1 cache
        computes, while writing into the pool."""
        rows = slice(slot, slot + 1)
        views, zero = [], []
        for s in self.state:
            if isinstance(s, AttentionState):
                s.key_mask[rows] = True  # an earlier, padded occupant may have left masked positions
                views.append(AttentionState(kv=_kv_view(s.kv, rows, None, 0), key_mask=s.key_mask[rows]))
            else:
                view = _row_view(s, rows)
                zero.extend(_tensor_fields(view))
                views.append(view)
        if zero:  # one multi-tensor launch, not one per SSM / conv tensor (96 for Mamba-2 1.3B) before each prefill
            torch._foreach_zero_(zero)
        self.lengths[slot] = 0
        self.padded[slot] = False
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
        padded = any(self.padded[:n])  # apply key_mask only when some row holds padding
        views = []
        for s in self.state:
            if isinstance(s, AttentionState):
                views.append(AttentionState(kv=_kv_view(s.kv, rows, lengths, None), key_mask=s.key_mask[rows],
                                            padded=padded))
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
        self.padded[slot] = False


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
