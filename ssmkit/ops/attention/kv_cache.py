"""A preallocated key/value cache for attention decode, optionally stored as int8 with per-(token, head) scales.

Allocated once at max_len (as gpt-fast's KVCache and mamba_ssm's allocate_inference_cache) so the decode loop
never reallocates. int8 storage uses symmetric absmax quantization over headdim: q = round(t / s), s = absmax/127.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssmkit.ops.validate import check_position, check_same_device, check_tensor

INT8_MAX = 127


def quantize_int8(t: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization along `dim`.

    Args:
        t: floating tensor, e.g. keys (batch, seqlen, nkv_heads, headdim) with dim=-1 (one scale per token, head).
    Returns:
        q: int8, t's shape, in [-127, 127]. scale: t's shape with size 1 along dim, float32 (float64 for
        float64 t), scale = max |t| / 127 along dim. dequantize_int8(q, scale) is within scale / 2 of t.
    """
    compute = torch.float64 if t.dtype == torch.float64 else torch.float32
    t = t.to(compute)
    scale = t.abs().amax(dim=dim, keepdim=True) / INT8_MAX
    # An all-zero slice has scale 0; dividing by 1 instead keeps q = 0 and the round trip exact.
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(t / safe).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q (int8, any shape) times scale (broadcastable, as quantize_int8 returns it) -> scale.dtype."""
    return q.to(scale.dtype) * scale


@dataclass
class KVCache:
    """Keys and values of one attention layer for up to max_len positions.

    k, v: (batch, max_len, nkv_heads, headdim) in kv_dtype (default: dtype). With kv_dtype=torch.int8 they
    hold int8 and k_scale, v_scale (batch, max_len, nkv_heads, 1) hold the per-(token, head) scales.
    length: the filled prefix shared by all rows; with per_row=True, lengths (batch,) int64 tracks each row
    and length = max(lengths). `append` returns tensors of dtype: views of the storage when kv_dtype == dtype,
    dequantized copies otherwise.
    """

    batch: int
    max_len: int
    nkv_heads: int
    headdim: int
    dtype: torch.dtype = torch.float32
    device: torch.device | str | None = None
    kv_dtype: torch.dtype | None = None
    per_row: bool = False
    k: torch.Tensor = field(init=False, repr=False)
    v: torch.Tensor = field(init=False, repr=False)
    k_scale: torch.Tensor | None = field(init=False, default=None, repr=False)
    v_scale: torch.Tensor | None = field(init=False, default=None, repr=False)
    length: int = field(init=False, default=0)
    lengths: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self):
        for name in ("batch", "max_len", "nkv_heads", "headdim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not self.dtype.is_floating_point:
            raise ValueError(f"dtype: expected a floating dtype, got {self.dtype}")
        self.kv_dtype = self.dtype if self.kv_dtype is None else self.kv_dtype
        if not (self.kv_dtype.is_floating_point or self.kv_dtype == torch.int8):
            raise ValueError(f"kv_dtype: expected a floating dtype or torch.int8, got {self.kv_dtype}")
        shape = (self.batch, self.max_len, self.nkv_heads, self.headdim)
        self.k = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
        if self.quantized:
            scale_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
            self.k_scale = torch.zeros(*shape[:3], 1, dtype=scale_dtype, device=self.device)
            self.v_scale = torch.zeros(*shape[:3], 1, dtype=scale_dtype, device=self.device)
        if self.per_row:
            self.lengths = torch.zeros(self.batch, dtype=torch.int64, device=self.k.device)

    @property
    def quantized(self) -> bool:
        return self.kv_dtype == torch.int8

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes n new positions per row after each row's filled part.

        Args:
            k_new, v_new: (batch, n, nkv_heads, headdim).
        Returns:
            (k_all, v_all): (batch, length, nkv_heads, headdim) in dtype, length counted after the append.
            With per_row, row b is valid up to lengths[b]; attend with q_offset = the lengths before the
            append, so the causal mask hides the unfilled tail of shorter rows.
        """
        check_tensor("k_new", k_new, ndim=4)
        batch, n = k_new.shape[:2]
        check_tensor("k_new", k_new, shape=(self.batch, n, self.nkv_heads, self.headdim))
        check_tensor("v_new", v_new, shape=tuple(k_new.shape))
        check_same_device(k_new=k_new, v_new=v_new, cache=self.k)
        if self.per_row:
            start = self.lengths
            needed = int(start.max()) + n
        else:
            needed = self.length + n
        if needed > self.max_len:
            raise ValueError(f"max_len: the cache holds {self.max_len} positions, appending {n} needs {needed}")
        if self.per_row:
            rows = torch.arange(batch, device=self.k.device)[:, None]  # (B, 1)
            index = (rows, start[:, None] + torch.arange(n, device=self.k.device))  # each (B, n)
            self.lengths = start + n
        else:
            index = (slice(None), slice(self.length, needed))
        self._write(index, k_new, v_new)
        self.length = needed
        return self._read(needed)

    def write_at(self, position: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Static-shape append of one position per row, for a decode step captured in a CUDA graph.

        Args:
            position: (1,) or (batch,) int64 on the cache's device: where each row's new key goes (< max_len;
                not checked, reading it would synchronize the host).
            k_new, v_new: (batch, 1, nkv_heads, headdim).
        Returns:
            (k_all, v_all): (batch, max_len, nkv_heads, headdim) in dtype, every position, filled or not; the
            caller masks positions past `position` (and earlier padding). `length` and `lengths` are left as they
            are: the caller owns the position (a captured graph cannot update a Python int) and sets `length`
            after the step when it mixes this with `append`.
        """
        check_tensor("k_new", k_new, shape=(self.batch, 1, self.nkv_heads, self.headdim))
        check_tensor("v_new", v_new, shape=tuple(k_new.shape))
        check_position("position", position, self.batch)
        check_same_device(k_new=k_new, v_new=v_new, position=position, cache=self.k)
        rows = torch.arange(self.batch, device=self.k.device)
        self._write((rows, position.expand(self.batch)), k_new[:, 0], v_new[:, 0])  # index_put: no host sync
        return self._read(self.max_len)

    def read_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(k_all, v_all): (batch, max_len, nkv_heads, headdim) in dtype, every position, filled or not (views
        of the storage when kv_dtype == dtype), as `write_at` returns them."""
        return self._read(self.max_len)

    def truncate(self, length: int | torch.Tensor) -> None:
        """Shortens the filled part (keeps the first `length` positions): an int for all rows, or (batch,)
        per-row lengths with per_row, e.g. the true lengths after prefilling a right-padded batch."""
        if self.per_row:
            new = torch.as_tensor(length, dtype=torch.int64, device=self.k.device).expand(self.batch).clone()
            if bool((new < 0).any()) or bool((new > self.lengths).any()):
                raise ValueError(f"length: expected 0 <= length <= lengths={self.lengths.tolist()}, got {length}")
            self.lengths = new
            self.length = int(new.max())
        else:
            if not isinstance(length, int) or not 0 <= length <= self.length:
                raise ValueError(f"length: expected an int in [0, {self.length}], got {length!r}")
            self.length = length

    def reset(self) -> None:
        """Empties the cache (storage is kept, stale entries are masked by the lengths)."""
        self.truncate(0)

    def _write(self, index, k_new, v_new) -> None:
        if self.quantized:
            k_q, k_s = quantize_int8(k_new)
            v_q, v_s = quantize_int8(v_new)
            self.k[index], self.k_scale[index] = k_q, k_s
            self.v[index], self.v_scale[index] = v_q, v_s
        else:
            self.k[index] = k_new.to(self.kv_dtype)
            self.v[index] = v_new.to(self.kv_dtype)

    def _read(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.k[:, :length], self.v[:, :length]
        if self.quantized:
            k = dequantize_int8(k, self.k_scale[:, :length])
            v = dequantize_int8(v, self.v_scale[:, :length])
        return k.to(self.dtype), v.to(self.dtype)
