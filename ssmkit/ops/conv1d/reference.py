"""Depthwise causal 1-D convolution, the short conv in front of the Mamba and Mamba-2 SSMs (spec, any dtype).

out[t, d] = bias[d] + sum_k weight[d, k] * x[t - (width - 1) + k, d]; inputs before t = 0 come from a conv
state of the last `width` inputs (oldest first, newest last), as in mamba_ssm's `causal_conv1d_ref`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
):
    """Causal depthwise conv over the sequence axis.

    Args:
        x: (batch, seqlen, dim).
        weight: (dim, width); bias: (dim,) or None; activation: None or "silu".
        initial_state: (batch, dim, width), or (nseq, dim, width) with cu_seqlens; its last width-1 columns are
            the inputs that precede x (the oldest column only passes through to the final state when seqlen == 0).
        cu_seqlens: (nseq + 1,) int offsets of packed sequences in x (batch 1); no sequence sees another's inputs.
    Returns:
        out (batch, seqlen, dim) in x.dtype, and with return_final_state also the final conv state
        (batch or nseq, dim, width) in x.dtype: the last `width` inputs of each sequence, the initial state
        (zeros when absent) filling in on the left when the sequence is shorter than `width`.
    """
    if cu_seqlens is None:
        out, final_state = _conv_one(x, weight, bias, activation, initial_state)
    else:
        # Each packed sequence is convolved on its own, so it is zero-padded (or state-padded) on the left.
        bounds = cu_seqlens.tolist()
        outs, finals = [], []
        for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            h0 = None if initial_state is None else initial_state[i : i + 1]
            out_i, final_i = _conv_one(x[:, start:end], weight, bias, activation, h0)
            outs.append(out_i)
            finals.append(final_i)
        out, final_state = torch.cat(outs, dim=1), torch.cat(finals, dim=0)
    return (out, final_state) if return_final_state else out


def _conv_one(x, weight, bias, activation, initial_state):
    """One unpacked batch: (batch, seqlen, dim) -> out (batch, seqlen, dim), final state (batch, dim, width)."""
    batch, _, dim = x.shape
    width = weight.shape[1]
    dtype = torch.promote_types(x.dtype, weight.dtype)
    xt = x.transpose(1, 2).to(dtype)  # (B, D, T)
    if initial_state is None:
        history = xt.new_zeros(batch, dim, width)
    else:
        history = initial_state.to(dtype)
    padded = torch.cat([history[:, :, 1:], xt], dim=-1)  # (B, D, width - 1 + T)
    # F.conv1d is a cross-correlation: output t sees padded[t : t + width] = x[t - width + 1 .. t].
    out = F.conv1d(padded, weight.to(dtype).unsqueeze(1), None if bias is None else bias.to(dtype), groups=dim)
    if activation == "silu":
        out = F.silu(out)
    final_state = torch.cat([history, xt], dim=-1)[:, :, -width:]
    return out.transpose(1, 2).to(x.dtype), final_state.to(x.dtype)
