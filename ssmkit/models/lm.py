"""The language model: token embeddings, a stack of pre-norm blocks, a final RMSNorm and the LM head.

One class serves Mamba, Mamba-2, Transformer++ (Llama), S4 and every hybrid, as described by a ModelConfig.
Decoding uses a list of per-layer states from `allocate_state` (constant size for SSM layers, a KV cache for
attention layers).
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.layers import MoE, RMSNorm
from ssmkit.layers.packing import check_packed
from ssmkit.ops.argmax_keys import fold_argmax_keys
from ssmkit.ops.norm import add_rms_norm, norm_linear

from . import block as block_module
from .block import Block, stream_dtype
from .config import ModelConfig


class LanguageModel(nn.Module):
    """Submodules: embeddings, layers (Blocks), norm_f, lm_head (its weight is the embeddings' when tied).

    After each forward, `aux_loss` holds moe_aux_loss_coef times the mean load-balancing loss of the MoE layers
    (None without MoE layers); each MoE layer exposes `last_expert_counts`.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm_f = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        nn.init.normal_(self.embeddings.weight, std=0.02)
        nn.init.normal_(self.lm_head.weight, std=0.02)
        self.tie_weights()
        self.aux_loss: torch.Tensor | None = None

    def tie_weights(self) -> None:
        """Shares the embedding matrix with the LM head when config.tie_embeddings (call again after to_empty)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embeddings.weight

    def allocate_state(self, batch: int, max_len: int, dtype: torch.dtype | None = None, device=None) -> list:
        """One state per layer, allocated once: SSM states of fixed size, KV caches of max_len positions.

        dtype and device default to those of the model's parameters.
        """
        if batch < 1 or max_len < 1:
            raise ValueError(f"batch, max_len: expected >= 1, got batch={batch}, max_len={max_len}")
        ref = self.embeddings.weight
        dtype = ref.dtype if dtype is None else dtype
        device = ref.device if device is None else device
        return [layer.allocate_state(batch, max_len, dtype, device) for layer in self.layers]

    def forward(self, input_ids: torch.Tensor, state: list | None = None, *,
                key_padding_mask: torch.Tensor | None = None, logits_to_keep: int = 0,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (batch, seqlen) int -> logits (batch, seqlen, vocab_size).

        logits_to_keep: compute logits for the last this-many positions only (0 = all); prefill needs one, and
        the full (seqlen, vocab) logits of a long prompt can outweigh the whole decode state.

        state: a list from `allocate_state`; the tokens continue the sequences it holds and it is updated in
        place (prefill, chunked prefill, decode). key_padding_mask (batch, seqlen) bool, True at real tokens and
        False at left padding: padded tokens leave the SSM states unchanged and are never attended to.

        cu_seqlens (nseq + 1,) int32/int64, non-decreasing from 0 to seqlen: documents packed into one row
        (batch 1), each computed as if run alone from a fresh state (SSM states and conv windows restart,
        attention stays inside the document, RoPE positions restart at 0). Not with state or key_padding_mask.
        """
        self._check_inputs(input_ids, state, key_padding_mask)
        packed = {}
        if cu_seqlens is not None:
            cu = check_packed(cu_seqlens, tuple(input_ids.shape), state, key_padding_mask)
            packed = {"cu_seqlens": cu.to(input_ids.device)}
        return self._forward_unchecked(input_ids, state, key_padding_mask, logits_to_keep, **packed)

    def _forward_unchecked(self, input_ids, state=None, key_padding_mask=None, logits_to_keep: int = 0,
                           **packed) -> torch.Tensor:
        """forward after its input checks (which read the token ids back to the host): what a CUDA graph of the
        prefill captures (ssmkit.inference.prefill_graphs), its caller having checked the whole prompt."""
        x = self.embeddings(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, None if state is None else state[i], key_padding_mask, **packed)
        self._collect_aux_loss()
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return self.lm_head(self.norm_f(x).to(self.lm_head.weight.dtype))

    def step(self, input_ids: torch.Tensor, state: list, position: torch.Tensor | None = None,
             argmax_keys: torch.Tensor | None = None) -> torch.Tensor:
        """One decode step without input checks: input_ids (batch,) -> logits (batch, vocab_size).

        position None: attention layers attend over the kv.length positions their caches hold and advance it.
        position (1,) or (batch,) int64 on the model's device, the cache index of this token: the static-shape
        step (ssmkit.inference.graphs captures it in a CUDA graph). Attention layers write their key there and
        attend over all max_len positions under a mask built on the device; nothing reads a value back to the
        host and nothing advances position or kv.length (the caller does, position in place).

        argmax_keys: None, or (batch,) int64 packed keys holding EMPTY_KEY (ssmkit.ops.argmax_keys) into which
        each row's largest key of the logits is folded: key_index(argmax_keys) is then the greedy token
        (torch.argmax's for logits without NaN). On a one-row CUDA step the LM head's launch does it (norm_linear's
        argmax epilogue), elsewhere fold_argmax_keys after it.
        """
        residual, delta = None, self.embeddings(input_ids)
        for layer, layer_state in zip(self.layers, state):  # each block adds the previous one's output
            residual, delta = layer.step_residual(residual, delta, layer_state, position)
        self._collect_aux_loss()
        stream = stream_dtype(residual, delta)
        if block_module.ONE_ROW_FUSIONS and block_module.gemv_rows(delta) and self.lm_head.bias is None:
            # the last add, norm_f and the LM head as one GEMV launch
            return norm_linear(delta, self.norm_f.weight, self.lm_head.weight, self.norm_f.eps, residual=residual,
                               residual_dtype=stream, norm_dtype=stream, argmax=argmax_keys)[0]
        h, _ = add_rms_norm(delta, residual, self.norm_f.weight, self.norm_f.eps, residual_dtype=stream,
                            norm_dtype=stream)  # norm_f normalizes the stream itself, uncast
        logits = self.lm_head(h.to(self.lm_head.weight.dtype))
        if argmax_keys is not None:
            fold_argmax_keys(argmax_keys, logits)
        return logits

    def generate(self, *args, **kwargs):
        """See ssmkit.inference.generate.generate. Imported lazily: the one reference from models/ upward to
        inference/, so that a model object carries `generate` like a transformers model does."""
        from ssmkit.inference.generate import generate

        return generate(self, *args, **kwargs)

    def moe_layers(self) -> list[MoE]:
        return [layer.ff for layer in self.layers if layer.ff_kind == "moe"]

    def _collect_aux_loss(self) -> None:
        losses = [moe.aux_loss for moe in self.moe_layers()]
        self.aux_loss = None if not losses else self.config.moe_aux_loss_coef * torch.stack(losses).mean()

    def _check_inputs(self, input_ids, state, key_padding_mask) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int32, torch.int64):
            got = input_ids.dtype if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids: expected an int32/int64 tensor (batch, seqlen), got {got}")
        if input_ids.ndim != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
            raise ValueError(f"input_ids: expected shape (batch, seqlen) with batch, seqlen >= 1 (a non-empty "
                             f"prompt), got shape {tuple(input_ids.shape)}")
        lo, hi = torch.stack((input_ids.min(), input_ids.max())).tolist()  # one read-back, not two
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"input_ids: expected token ids in [0, {self.config.vocab_size}) (vocab_size), "
                             f"got ids in [{lo}, {hi}]")
        if state is not None and len(state) != len(self.layers):
            raise ValueError(f"state: expected a list of {len(self.layers)} layer states (from allocate_state), "
                             f"got {len(state)}")
        if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool
                                             or tuple(key_padding_mask.shape) != tuple(input_ids.shape)):
            raise ValueError(f"key_padding_mask: expected a bool tensor of shape {tuple(input_ids.shape)}, got "
                             f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
