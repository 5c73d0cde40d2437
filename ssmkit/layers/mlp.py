"""Position-wise feed-forward layers: SwiGLU (Shazeer 2020, as in Llama) and GELU (GPT-2 style).

Names follow transformers' LlamaMLP: gate_proj, up_proj, down_proj (the GELU MLP has no gate_proj).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.ops.linear import linear


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); GELU: down(gelu(up(x))). Reads d_model, d_ff, mlp_activation, mlp_bias."""

    def __init__(self, config):
        super().__init__()
        d, f, bias = config.d_model, config.d_ff, config.mlp_bias
        self.activation = config.mlp_activation
        if self.activation == "swiglu":
            self.gate_proj = nn.Linear(d, f, bias=bias)
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (..., d_model) -> (..., d_model). key_padding_mask is accepted for a common interface and unused."""
        up = linear(x, self.up_proj.weight, self.up_proj.bias)  # one row (a decode step): a Triton GEMV on CUDA
        if self.activation == "swiglu":
            hidden = F.silu(linear(x, self.gate_proj.weight, self.gate_proj.bias)) * up
        else:
            hidden = F.gelu(up)
        return linear(hidden, self.down_proj.weight, self.down_proj.bias)

    def down_gated(self, up: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """SwiGLU's down(silu(gate) * up) from up_proj's and gate_proj's outputs, the product formed inside the
        down projection's GEMV for one row on CUDA (ssmkit.ops.linear, gate=)."""
        return linear(up, self.down_proj.weight, self.down_proj.bias, gate=gate)
