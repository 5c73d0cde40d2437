"""Left padding for batched prompts of different lengths: padded positions must not touch the recurrent state.

`key_padding_mask` (batch, seqlen) is True at real tokens and False at padding. SSM mixers zero the conv input at
padded positions (exact for left padding: a fresh conv state holds zeros) and set dt = 0 there, so the state
passes through unchanged (exp(0 * A) = 1 and dt * B * x = 0) whatever it held before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def zero_padded(x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """x (batch, seqlen, dim) with padded positions set to 0."""
    if key_padding_mask is None:
        return x
    return x * key_padding_mask[..., None].to(x.dtype)


def padded_dt(dt: torch.Tensor, dt_bias: torch.Tensor, key_padding_mask: torch.Tensor,
              dt_limit: tuple[float, float] | None = None) -> torch.Tensor:
    """The effective step clamp(softplus(dt + dt_bias), *dt_limit), then 0 at padded positions.

    dt (batch, seqlen, n); dt_bias (n,). Computed in float32 (or float64), as the scan ops do; the caller passes
    the result with dt_bias=None, dt_softplus=False and no dt_limit.
    """
    ct = torch.float64 if dt.dtype == torch.float64 else torch.float32
    eff = F.softplus(dt.to(ct) + dt_bias.to(ct))
    if dt_limit is not None:
        eff = eff.clamp(dt_limit[0], dt_limit[1])
    return eff * key_padding_mask[..., None].to(ct)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """SSM states of half-precision models are kept in float32, the scans' compute dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
