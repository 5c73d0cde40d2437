"""The pointwise parts around the SSD scan, shared by every evaluation order.

Before the scan: the step size dt (bias, softplus, limits). After it: the D skip and the SiLU gate,
out = (SSM(x) + D x) * silu(z), as in the Mamba-2 block (Dao & Gu 2024, section 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def effective_dt(dt, dt_bias=None, dt_softplus=False, dt_limit=None):
    """dt (..., nheads) -> softplus(dt + dt_bias) clamped to dt_limit, in the compute dtype."""
    dt = dt.to(compute_dtype(dt.dtype))
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if dt_limit is not None:
        lo, hi = dt_limit
        if lo > 0.0 or hi < float("inf"):
            dt = dt.clamp(min=lo, max=hi)
    return dt


def skip_and_gate(y, x, D=None, z=None):
    """y, x, z (batch, seqlen, nheads, headdim) or (batch, nheads, headdim); D (nheads,) or (nheads, headdim)."""
    if D is not None:
        Dx = D.to(y.dtype) if D.ndim == 2 else D.to(y.dtype)[:, None]
        y = y + x.to(y.dtype) * Dx
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def heads_from_groups(t, nheads: int):
    """B or C (..., ngroups, dstate) -> (..., nheads, dstate): head h reads group h // (nheads // ngroups)."""
    ngroups = t.shape[-2]
    return t if ngroups == nheads else t.repeat_interleave(nheads // ngroups, dim=-2)
