"""RMSNorm and Mamba-2's gated RMSNorm (spec): y = x / sqrt(mean(x^2) + eps) * weight.

The casts follow transformers' LlamaRMSNorm and MambaRMSNormGated: statistics in float32 (float64 stays
float64), the normalized value cast back to x.dtype, and only then multiplied by the weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x (..., dim), weight (dim,) -> (..., dim), dtype promote(x.dtype, weight.dtype) as in transformers."""
    h = x.to(_compute_dtype(x.dtype))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                     residual_dtype: torch.dtype, norm_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A pre-norm block's residual add, then its RMSNorm: r = (residual + x) in residual_dtype (x alone when
    residual is None), returns (rms_norm_ref(r.to(norm_dtype), weight, eps), r)."""
    r = x.to(residual_dtype) if residual is None else (residual + x).to(residual_dtype)
    return rms_norm_ref(r.to(norm_dtype), weight, eps), r


def gated_rms_norm_ref(
    x: torch.Tensor,
    z: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float = 1e-6,
    group_size: int | None = None,
    norm_before_gate: bool = False,
) -> torch.Tensor:
    """Gated RMSNorm of Mamba-2 (the norm between the SSD output y and out_proj, gated by z).

    Args:
        x: (..., dim), the SSD output. z: (..., dim), the gate branch, or None for a plain (grouped) RMSNorm.
        weight: (dim,). group_size: channels per normalization group (dim = ngroups * group_size, groups are
            contiguous channel blocks, as transformers' view(..., ngroups, group_size)); None = one group.
        norm_before_gate: False (Mamba-2's choice): normalize x * silu(z). True: normalize x, then
            multiply by weight and silu(z).
    Returns:
        (..., dim), dtype promote(x.dtype, weight.dtype).

    For norm_before_gate=False this is MambaRMSNormGated's forward. For True transformers has no module;
    silu(z) is then computed in float32 and cast to x.dtype like the normalized x, so in float32 and float64
    it equals mamba_ssm's rms_norm_ref, and in 16-bit types it differs from it only by one extra rounding.
    """
    compute = _compute_dtype(x.dtype)
    h = x.to(compute)
    gate = None if z is None else F.silu(z.to(compute))
    if gate is not None and not norm_before_gate:
        h = h * gate
    dim = h.shape[-1]
    group_size = dim if group_size is None else group_size
    h = h.unflatten(-1, (dim // group_size, group_size))  # (..., ngroups, group_size)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * h.flatten(-2).to(x.dtype)
    if gate is not None and norm_before_gate:
        out = out * gate.to(x.dtype)
    return out
