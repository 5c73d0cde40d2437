"""RMSNorm modules (Zhang & Sennrich 2019) over the ops in ssmkit.ops.norm.

`RMSNorm` is the pre-norm of every block; `GatedRMSNorm` is the Mamba-2 output norm, norm(y * silu(z)) per group.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.ops.norm import gated_rms_norm, rms_norm


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim; weight (dim,) as in transformers' *RMSNorm."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) -> (..., dim)."""
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class GatedRMSNorm(nn.Module):
    """RMSNorm of y * silu(z), normalized within groups of `group_size` channels (transformers' MambaRMSNormGated)."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """y, z (..., dim) -> (..., dim); the gate is applied before the norm."""
        return gated_rms_norm(y, z, self.weight, self.eps, group_size=self.group_size, norm_before_gate=False)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, group_size={self.group_size}, eps={self.eps}"
