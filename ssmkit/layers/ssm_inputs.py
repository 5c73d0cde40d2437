"""What the Mamba and Mamba-2 mixers share before their scan: the causal conv + SiLU, continuing a decode state,
and the decay rate A = -exp(A_log), computed in at least float32 as the scans compute.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.ops.conv1d import causal_conv1d

from .padding import state_dtype


def conv_silu(x: torch.Tensor, conv1d: nn.Conv1d, conv_state: torch.Tensor | None = None,
              cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """x (batch, seqlen, channels) -> silu(causal depthwise conv(x)); continues `conv_state` (batch, channels,
    width) and updates it in place when given."""
    weight, bias = conv1d.weight[:, 0], conv1d.bias
    if conv_state is None:
        return causal_conv1d(x, weight, bias, activation="silu", cu_seqlens=cu_seqlens)
    out, final = causal_conv1d(x, weight, bias, activation="silu", initial_state=conv_state,
                               return_final_state=True)
    conv_state.copy_(final)
    return out


def decay_rate(A_log: torch.Tensor) -> torch.Tensor:
    """A = -exp(A_log) in float32, or float64 for a float64 model."""
    return -torch.exp(A_log.to(state_dtype(A_log.dtype)))
