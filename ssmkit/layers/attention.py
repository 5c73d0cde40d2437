"""Causal multi-head / grouped-query self-attention with optional RoPE and biases (Transformer++, Jamba, Bamba).

Parameter names and shapes are transformers' LlamaAttention's: q_proj, k_proj, v_proj, o_proj. RoPE follows the
rotate-half convention with an optional partial rotary dimension (Bamba rotates half of each head); Jamba's
attention layers use no positional encoding (use_rope=False).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssmkit.ops.attention import attention, decode_attention, rope_and_cache
from ssmkit.ops.attention.kv_cache import KVCache
from ssmkit.ops.attention.rotary import apply_rotary, rotary_cos_sin, rotary_table
from ssmkit.ops.linear import linear

from .packing import positions_in_sequence


@dataclass
class AttentionState:
    """Decode state of one attention layer.

    kv: the layer's KVCache (keys after RoPE), whose `length` (or per-row `lengths`) is the number of positions
    seen. key_mask (batch, max_len) bool: False at positions that were padding, so later tokens never attend to
    them; `padded` turns True once a key_padding_mask was given (until then the mask is not applied at all).
    """

    kv: KVCache
    key_mask: torch.Tensor
    padded: bool = False


class Attention(nn.Module):
    """Self-attention over (batch, seqlen, d_model). Reads n_heads, n_kv_heads, head_dim, use_rope, rope_theta,
    partial_rotary_factor, attn_bias of ModelConfig."""

    def __init__(self, config):
        super().__init__()
        d, h, hkv, hd = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = h, hkv, hd
        self.use_rope, self.rope_theta, self.rotary_dim = config.use_rope, config.rope_theta, config.rotary_dim
        self.q_proj = nn.Linear(d, h * hd, bias=config.attn_bias)
        self.k_proj = nn.Linear(d, hkv * hd, bias=config.attn_bias)
        self.v_proj = nn.Linear(d, hkv * hd, bias=config.attn_bias)
        self.o_proj = nn.Linear(h * hd, d, bias=config.attn_bias)

    def allocate_state(self, batch: int, max_len: int, dtype: torch.dtype, device=None, *,
                       kv_dtype: torch.dtype | None = None, per_row: bool = False) -> AttentionState:
        """An empty KV cache of max_len positions (kv_dtype=torch.int8 stores it quantized; per_row tracks a
        length per row, see KVCache)."""
        kv = KVCache(batch, max_len, self.n_kv_heads, self.head_dim, dtype=dtype, device=device,
                     kv_dtype=kv_dtype, per_row=per_row)
        key_mask = torch.ones(batch, max_len, dtype=torch.bool, device=kv.k.device)
        return AttentionState(kv=kv, key_mask=key_mask)

    def forward(self, hidden: torch.Tensor, state: AttentionState | None = None,
                key_padding_mask: torch.Tensor | None = None, *,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (batch, seqlen, d_model) -> (batch, seqlen, d_model).

        Queries sit after the positions already in `state` (0 without a state); their keys and values are
        appended to it. key_padding_mask (batch, seqlen) bool, False at padding. With left padding the RoPE
        positions of a row are shifted by its pad count; attention scores depend only on position differences,
        so the result equals the unpadded row's (up to rounding).
        cu_seqlens (nseq + 1,) strictly increasing: documents packed into one row (batch 1, no state, no mask,
        as LanguageModel.forward checks); each document attends only to itself, its RoPE positions from 0.
        """
        batch, seqlen, _ = hidden.shape
        q = self.q_proj(hidden).view(batch, seqlen, self.n_heads, self.head_dim)
        k = self.k_proj(hidden).view(batch, seqlen, self.n_kv_heads, self.head_dim)
        v = self.v_proj(hidden).view(batch, seqlen, self.n_kv_heads, self.head_dim)
        if cu_seqlens is not None:
            _, positions = positions_in_sequence(cu_seqlens.to(hidden.device), seqlen)
        else:
            start = self._start(state, hidden.device)  # int, or (batch, 1) with per-row lengths
            positions = start + torch.arange(seqlen, device=hidden.device)  # (seqlen,) or (batch, seqlen)
        if self.use_rope:
            cos, sin = rotary_cos_sin(positions, self.head_dim, self.rope_theta, dtype=q.dtype,
                                      device=hidden.device, rotary_dim=self.rotary_dim)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cu_seqlens is not None:
            y = packed_attention(q, k, v, cu_seqlens.tolist(), self.head_dim ** -0.5)
        else:
            y = self._attend(q, k, v, state, positions, key_padding_mask)
        return self.o_proj(y.reshape(batch, seqlen, self.n_heads * self.head_dim))

    def step(self, hidden: torch.Tensor, state: AttentionState, position: torch.Tensor | None = None
             ) -> torch.Tensor:
        """One token: hidden (batch, d_model) -> (batch, d_model); appends to the KV cache.

        position None: the dynamic step, over the kv.length filled positions (advances kv.length).
        position (1,) or (batch,) int64 on the device: the static-shape step a CUDA graph can capture (see
        `step_static`).
        """
        if position is None:
            return self.forward(hidden[:, None], state)[:, 0]
        return self.step_static(hidden, state, position)

    def step_static(self, hidden: torch.Tensor | None, state: AttentionState, position: torch.Tensor,
                    qkv: tuple | None = None) -> torch.Tensor:
        """One token with fixed shapes and no host synchronization: hidden (batch, d_model) -> (batch, d_model).

        position (1,) or (batch,) int64 on the device: the cache index of the new token (its RoPE position too).
        The key goes to kv at `position`; the query attends over all max_len cache positions under the mask
        `index <= position` and key_mask, so the shapes never change and the result equals the dynamic step's
        (masked keys get exactly zero weight). Neither position nor kv.length is advanced: the caller owns them.
        qkv: q_proj, k_proj and v_proj's outputs already made (a block that fuses its pre-norm into them passes
        them, hidden None).
        """
        if qkv is None:
            qkv = [linear(hidden, p.weight, p.bias) for p in (self.q_proj, self.k_proj, self.v_proj)]
        batch = qkv[0].shape[0]
        q = qkv[0].view(batch, self.n_heads, self.head_dim)
        k = qkv[1].view(batch, self.n_kv_heads, self.head_dim)
        v = qkv[2].view(batch, self.n_kv_heads, self.head_dim)
        table = self._rope_table(position, state.kv.max_len, q.dtype) if self.use_rope else None
        if state.kv.quantized or (self.use_rope and table is None):
            q = self._rope_and_write_unfused(q, k, v, position, state, table)
        else:  # RoPE of q and k, k and v into the caches, the key mask set (one Triton launch once selectable)
            q = rope_and_cache(q, k, v, position, state.kv.k, state.kv.v, cos_sin=table, key_mask=state.key_mask)
        k_all, v_all = state.kv.read_all()  # (batch, max_len, nkv_heads, headdim)
        # on CUDA the split-K Triton kernel where it tiles the inputs (not an int8 cache), else masked SDPA
        y = decode_attention(q, k_all, v_all, position, key_mask=state.key_mask, scale=self.head_dim ** -0.5)
        return linear(y.reshape(batch, self.n_heads * self.head_dim), self.o_proj.weight, self.o_proj.bias)

    def _rope_table(self, position: torch.Tensor, max_len: int, dtype: torch.dtype) -> torch.Tensor | None:
        """cos and sin of positions 0 .. max_len - 1, (2, max_len, rotary_dim), shared by every layer with this
        RoPE (rotary_table); None while a CUDA graph is being captured and no table exists yet (its values would
        only exist at replay; the decoder's eager warm-up steps build it before capture)."""
        capturing = position.is_cuda and torch.cuda.is_current_stream_capturing()
        return rotary_table(max_len, self.head_dim, self.rope_theta, dtype=dtype, device=position.device,
                            rotary_dim=self.rotary_dim, build=not capturing)

    def _rope_and_write_unfused(self, q, k, v, position, state: AttentionState, table) -> torch.Tensor:
        """The static step's RoPE and cache write op by op: for int8 caches (quantized on write) and captures
        without a RoPE table. q (batch, nheads, headdim), k, v (batch, nkv_heads, headdim) -> q rotated."""
        batch = q.shape[0]
        pos = position.view(-1, 1)  # (1 or batch, 1)
        q, k, v = q[:, None], k[:, None], v[:, None]
        if self.use_rope:
            if table is None:
                cos, sin = rotary_cos_sin(pos, self.head_dim, self.rope_theta, dtype=q.dtype, device=q.device,
                                          rotary_dim=self.rotary_dim)  # (1 or batch, 1, rotary_dim)
            else:
                cos, sin = table[:, pos]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        state.kv.write_at(position, k, v)
        state.key_mask.scatter_(1, pos.expand(batch, 1), True)
        return q[:, 0]

    def _attend(self, q, k, v, state: AttentionState | None, positions, key_padding_mask) -> torch.Tensor:
        """Attention of the new queries over the cached keys (when `state`) and the new ones, which it appends."""
        mask, q_offset = key_padding_mask, None
        if state is not None:
            if state.kv.per_row:
                q_offset = state.kv.lengths.clone()
            k, v = state.kv.append(k, v)
            mask = self._update_key_mask(state, positions, key_padding_mask, k.shape[1])
        return attention(q, k, v, causal=True, scale=self.head_dim ** -0.5, q_offset=q_offset,
                         key_padding_mask=mask)

    @staticmethod
    def _start(state: AttentionState | None, device):
        if state is None:
            return 0
        if state.kv.per_row:
            return state.kv.lengths[:, None].to(device)
        return state.kv.length

    @staticmethod
    def _update_key_mask(state: AttentionState, positions, key_padding_mask, kv_len: int):
        """Records which new positions are padding; returns the (batch, kv_len) mask to attend with, or None."""
        if key_padding_mask is not None:
            state.key_mask.scatter_(1, positions.expand(key_padding_mask.shape[0], -1), key_padding_mask)
            state.padded = True
        elif state.padded:
            state.key_mask.scatter_(1, positions.expand(state.key_mask.shape[0], -1), True)
        return state.key_mask[:, :kv_len] if state.padded else None



def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int],
                     scale: float) -> torch.Tensor:
    """Causal attention inside each document of a packed row: q (1, seqlen, nheads, headdim), k, v (1, seqlen,
    nkv_heads, headdim), bounds = cu_seqlens as a list. Returns (1, seqlen, nheads, headdim).

    Equal to one call with a block-diagonal causal mask, but each document is a square causal problem (SDPA's
    is_causal, flash kernels on GPU) costing L_k^2 rather than seqlen^2: packed_forward flattens a whole batch
    into the row, where a dense (batch * T)^2 mask would cost `batch` times the compute of the padded batch.
    """
    return torch.cat([attention(q[:, s:e], k[:, s:e], v[:, s:e], causal=True, scale=scale)
                      for s, e in zip(bounds[:-1], bounds[1:])], dim=1)
