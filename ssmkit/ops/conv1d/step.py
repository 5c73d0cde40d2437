"""One decode step of the depthwise causal conv: shift the conv state by one input and apply the filter.

Equal to `causal_conv1d_ref` token by token; the state layout (batch, dim, width), oldest first, is mamba_ssm's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class ConvStep(NamedTuple):
    """A conv decode step for a projection to finish (ssmkit.ops.norm.norm_linear's `conv`): output features
    start .. start + dim - 1 of the projection are this step's input x, replaced in the result by
    causal_conv1d_step(state, x, weight, bias, activation), `state` (batch, dim, width) rolled in place."""

    state: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    start: int
    activation: str | None = "silu"


def causal_conv1d_step_ref(
    conv_state: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Advances `conv_state` by one input, in place, and returns the conv output for that input.

    Args:
        conv_state: (batch, dim, width), the last `width` inputs, oldest first; updated in place.
        x: (batch, dim), the new input.
        weight: (dim, width); bias: (dim,) or None; activation: None or "silu".
    Returns:
        (batch, dim) in x.dtype.
    """
    # In place so a preallocated cache (and a captured CUDA graph) keeps pointing at the same memory.
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    dtype = torch.promote_types(x.dtype, weight.dtype)
    out = (conv_state.to(dtype) * weight.to(dtype)).sum(dim=-1)  # (B, D)
    if bias is not None:
        out = out + bias.to(dtype)
    if activation == "silu":
        out = F.silu(out)
    return out.to(x.dtype)
