"""A pre-norm residual block: x + mixer(norm(x)), then x + ff(ff_norm(x)) when the layer has a feed-forward.

The mixer kind (mamba, mamba2, attention, s4) and the feed-forward kind (None, mlp, moe) come from the config's
per-layer pattern; hybrids are patterns, not subclasses.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.layers import MLP, Attention, Mamba, Mamba2, MoE, RMSNorm, S4
import ssmkit.ops.norm as norm_ops
from ssmkit.ops.norm import add_rms_norm, norm_linear

# The batch-1 decode fusions of Block.step_residual and LanguageModel.step: one GEMV launch for the pre-norm and an
# attention layer's q, k, v (stacked weights), one for the feed-forward norm and a SwiGLU's gate and up, silu(gate) *
# up inside the down projection's GEMV, the last add + norm_f inside the LM head's. On an H100 (2026-12-07, 2nd
# session) their GPU tests passed (every generate_cuda test, batch 1 and 2, with the switch on) and a Transformer++
# 125M step went from 449 to 314 us (172 -> 87 kernels; benchmarks/results/decode-fusions-h100-2026-12-07.md).
# False: the unfused steps.
ONE_ROW_FUSIONS = True

MIXER_CLASSES = {"mamba": Mamba, "mamba2": Mamba2, "attention": Attention, "s4": S4}
FEED_FORWARD_CLASSES = {"mlp": MLP, "moe": MoE}


class Block(nn.Module):
    """Layer `layer_idx` of a ModelConfig. Submodules: norm, mixer, and (with a feed-forward) ff_norm, ff.

    fuse_in_proj: the decode step of a Mamba or Mamba-2 mixer without in_proj bias runs the block's pre-norm, the
    mixer's in_proj and its short conv's step as one op (ssmkit.ops.norm.norm_linear with conv=). With
    ONE_ROW_FUSIONS, a batch-1 step on CUDA also runs the pre-norm and an attention mixer's q, k, v projections as
    one GEMV launch (stacked weights), and the feed-forward norm and a SwiGLU MLP's gate and up projections as
    another. The Profiler turns fuse_in_proj off
    while it records, so that a mixer's and a feed-forward's recorded steps still include their input projections.
    """

    fuse_in_proj = True

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.mixer_kind = config.mixers[layer_idx]
        self.ff_kind = config.feed_forwards[layer_idx]
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = MIXER_CLASSES[self.mixer_kind](config)
        if self.ff_kind is not None:
            self.ff_norm = RMSNorm(config.d_model, config.norm_eps)
            self.ff = FEED_FORWARD_CLASSES[self.ff_kind](config)

    def allocate_state(self, batch: int, max_len: int, dtype: torch.dtype, device=None):
        """The mixer's decode state (MambaState, Mamba2State, AttentionState or S4State)."""
        return self.mixer.allocate_state(batch, max_len, dtype, device)

    def forward(self, x: torch.Tensor, state=None, key_padding_mask: torch.Tensor | None = None, *,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """x (batch, seqlen, d_model) -> (batch, seqlen, d_model); `state` (this layer's) is updated in place.

        cu_seqlens (nseq + 1,): documents packed into one row (batch 1), checked by LanguageModel.forward; only
        the mixer needs it (the feed-forward is position-wise), and it is passed only when given.
        """
        dtype = self.norm.weight.dtype
        residual = x.float() if self.residual_in_fp32 else x
        packed = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
        x = residual + self.mixer(self.norm(x.to(dtype)), state, key_padding_mask, **packed)
        if self.ff_kind is not None:
            x = x + self.ff(self.ff_norm(x.to(dtype)), key_padding_mask)
        return x

    def step(self, x: torch.Tensor, state, position: torch.Tensor | None = None) -> torch.Tensor:
        """One token: x (batch, d_model) -> (batch, d_model), through the mixer's step.

        position (1,) or (batch,) int64, or None: passed to attention mixers only (their static-shape step);
        SSM mixers' steps have fixed shapes already.
        """
        residual, out = self.step_residual(None, x, state, position)
        return residual + out

    def step_residual(self, residual: torch.Tensor | None, delta: torch.Tensor, state,
                      position: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`step` with the residual adds deferred: the stream is residual + delta (residual None: delta alone);
        returns (residual', delta') whose sum is step's output. Each add is fused into the norm that follows it
        (ssmkit.ops.norm.add_rms_norm), the previous block's last add into this block's first norm, which is
        how LanguageModel.step chains blocks. Same numbers as forward's unfused add, cast and norm for 16- and
        32-bit models; a float64 model keeps its stream in float64 where forward's residual_in_fp32 rounds it to
        float32 (x.float())."""
        dtype = self.norm.weight.dtype
        stream = stream_dtype(residual, delta)
        if self.residual_in_fp32:
            stream = torch.promote_types(stream, torch.float32)
        # isinstance, not mixer_kind: a wrapped mixer (tensor-parallel, ...) keeps its kind but not its in_proj
        one_row = self.fuse_in_proj and ONE_ROW_FUSIONS and gemv_rows(delta)
        if self.fuse_in_proj and isinstance(self.mixer, (Mamba, Mamba2)) and self.mixer.in_proj.bias is None:
            # one row on CUDA: the short conv's decode step too, in the same GEMV launch (elsewhere the mixer's own
            # conv step, which a composed norm_linear would run as well, plus a copy into its output)
            conv = self.mixer.conv_step(state) if gemv_rows(delta) and norm_ops.CONV_EPILOGUE_AUTO else None
            projected, residual = norm_linear(delta, self.norm.weight, self.mixer.in_proj.weight, self.norm.eps,
                                              residual=residual, residual_dtype=stream, norm_dtype=dtype, conv=conv)
            out = self.mixer.step(projected, state, projected=True, conv_done=conv is not None)
        elif (one_row and position is not None and isinstance(self.mixer, Attention)
              and self.mixer.q_proj.bias is None):  # the add + pre-norm and q, k, v's GEMVs: one launch
            projections = (self.mixer.q_proj, self.mixer.k_proj, self.mixer.v_proj)
            qkv, residual = norm_linear(delta, self.norm.weight, tuple(p.weight for p in projections),
                                        self.norm.eps, residual=residual, residual_dtype=stream, norm_dtype=dtype)
            qkv = qkv.split([p.out_features for p in projections], dim=-1)
            out = self.mixer.step_static(None, state, position, qkv=qkv)
        else:
            h, residual = add_rms_norm(delta, residual, self.norm.weight, self.norm.eps, residual_dtype=stream,
                                       norm_dtype=dtype)
            if position is not None and self.mixer_kind == "attention":
                out = self.mixer.step(h, state, position)
            else:
                out = self.mixer.step(h, state)
        if self.ff_kind is None:
            return residual, out
        if one_row and isinstance(self.ff, MLP) and self.ff.activation == "swiglu" and self.ff.up_proj.bias is None:
            gate_up, new_residual = norm_linear(out, self.ff_norm.weight, (self.ff.gate_proj.weight,
                                                                           self.ff.up_proj.weight),
                                                self.ff_norm.eps, residual=residual, residual_dtype=residual.dtype,
                                                norm_dtype=dtype)
            gate, up = gate_up.split([self.ff.gate_proj.out_features, self.ff.up_proj.out_features], dim=-1)
            return new_residual, self.ff.down_gated(up, gate)
        h, residual = add_rms_norm(out, residual, self.ff_norm.weight, self.ff_norm.eps,
                                   residual_dtype=residual.dtype, norm_dtype=dtype)
        return residual, self.ff(h)


def gemv_rows(x: torch.Tensor) -> bool:
    """Whether a step's rows x (batch, d_model) are one row on CUDA, where each projection is one GEMV launch that
    can redo the norm before it (ssmkit.ops.norm.norm_linear); elsewhere the norm runs once and feeds them all."""
    return x.is_cuda and x.shape[0] == 1


def stream_dtype(residual: torch.Tensor | None, delta: torch.Tensor) -> torch.dtype:
    """The dtype of residual + delta (delta's alone while no residual exists yet)."""
    return delta.dtype if residual is None else torch.promote_types(residual.dtype, delta.dtype)
