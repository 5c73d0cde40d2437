"""The Mamba-1 mixer (Gu & Dao 2023, figure 3): in_proj to x and z, causal conv + SiLU, x_proj to (dt, B, C),
dt_proj, selective scan gated by silu(z), out_proj. Parameter names and shapes are transformers' MambaMixer's
(plus JambaMambaMixer's dt/b/c RMSNorms when `mamba_inner_norms`), so checkpoints map by renaming only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.ops.conv1d import ConvStep, causal_conv1d_step
from ssmkit.ops.linear import linear
from ssmkit.ops.selective_scan import selective_scan, selective_scan_step

from .norm import RMSNorm
from .padding import padded_dt, state_dtype, zero_padded
from .ssm_inputs import conv_silu, decay_rate


@dataclass
class MambaState:
    """Decode state of one Mamba layer; sizes do not depend on the context length.

    conv_state (batch, d_inner, d_conv): the last d_conv conv inputs, newest last.
    ssm_state (batch, d_inner, d_state): h of the selective scan (float32 for half-precision models).
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


class Mamba(nn.Module):
    """Mamba-1 mixer over (batch, seqlen, d_model). Reads the `mamba_*` fields of ModelConfig."""

    def __init__(self, config):
        super().__init__()
        d, di, n, r = config.d_model, config.mamba_d_inner, config.mamba_d_state, config.mamba_dt_rank
        self.d_inner, self.d_state, self.dt_rank = di, n, r
        self.in_proj = nn.Linear(d, 2 * di, bias=config.mamba_proj_bias)
        # nn.Conv1d only holds weight (d_inner, 1, d_conv) and bias in transformers' layout; ops.conv1d applies them.
        self.conv1d = nn.Conv1d(di, di, config.mamba_d_conv, groups=di, bias=config.mamba_conv_bias)
        self.x_proj = nn.Linear(di, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, di, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, d, bias=config.mamba_proj_bias)
        if config.mamba_inner_norms:
            self.dt_layernorm = RMSNorm(r, config.norm_eps)
            self.b_layernorm = RMSNorm(n, config.norm_eps)
            self.c_layernorm = RMSNorm(n, config.norm_eps)
        self.inner_norms = config.mamba_inner_norms
        self._init_dt(config)

    @torch.no_grad()
    def _init_dt(self, config, dt_min: float = 1e-3, dt_max: float = 1e-1):
        """dt_proj as in the Mamba paper: bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max]."""
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def allocate_state(self, batch: int, max_len: int, dtype: torch.dtype, device=None) -> MambaState:
        """A zeroed state; max_len is unused (the state has a fixed size)."""
        conv = torch.zeros(batch, self.d_inner, self.conv1d.kernel_size[0], dtype=dtype, device=device)
        ssm = torch.zeros(batch, self.d_inner, self.d_state, dtype=state_dtype(dtype), device=device)
        return MambaState(conv_state=conv, ssm_state=ssm)

    def _dt_B_C(self, x: torch.Tensor):
        """x (..., d_inner) -> dt (..., d_inner) before bias and softplus, B and C (..., d_state)."""
        dt_low, B, C = self._dt_low_B_C(x)
        return F.linear(dt_low, self.dt_proj.weight), B, C

    def _dt_low_B_C(self, x: torch.Tensor):
        """x (..., d_inner) -> dt's low-rank input (..., dt_rank) (dt_proj not applied), B, C (..., d_state)."""
        dt, B, C = linear(x, self.x_proj.weight).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.inner_norms:
            dt, B, C = self.dt_layernorm(dt), self.b_layernorm(B), self.c_layernorm(C)
        return dt, B, C

    def forward(self, hidden: torch.Tensor, state: MambaState | None = None,
                key_padding_mask: torch.Tensor | None = None, *,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (batch, seqlen, d_model) -> (batch, seqlen, d_model).

        With `state`, continues from it and updates it in place (prefill, chunked prefill or decode).
        key_padding_mask (batch, seqlen) bool, False at (left) padding: see layers/padding.py.
        cu_seqlens (nseq + 1,) strictly increasing: documents packed into one row (batch 1, no state, no mask,
        as LanguageModel.forward checks); conv and scan restart at each document (layers/packing.py).
        """
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = zero_padded(x, key_padding_mask)
        x = conv_silu(x, self.conv1d, None if state is None else state.conv_state, cu_seqlens)
        dt, B, C = self._dt_B_C(x)
        dt_bias, softplus = self.dt_proj.bias, True
        if key_padding_mask is not None:
            dt, dt_bias, softplus = padded_dt(dt, dt_bias, key_padding_mask), None, False
        A = decay_rate(self.A_log)
        y = selective_scan(x, dt, A, B[:, :, None], C[:, :, None], D=self.D, z=z, dt_bias=dt_bias,
                           dt_softplus=softplus, initial_state=None if state is None else state.ssm_state,
                           return_final_state=state is not None, cu_seqlens=cu_seqlens, check_values=False)
        if state is not None:
            y, ssm_final = y
            state.ssm_state.copy_(ssm_final)
        return self.out_proj(y)

    def conv_step(self, state: MambaState) -> ConvStep:
        """The conv decode step that in_proj's x features (the first d_inner) go through, for a projection that
        finishes it (ssmkit.ops.norm.norm_linear's `conv`)."""
        return ConvStep(state.conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, 0, "silu")

    def step(self, hidden: torch.Tensor, state: MambaState, *, projected: bool = False,
             conv_done: bool = False) -> torch.Tensor:
        """One token: hidden (batch, d_model) -> (batch, d_model); updates `state` in place.

        projected: hidden is in_proj's output already (batch, 2 * d_inner), as a block that fuses its pre-norm
        into in_proj passes it (ssmkit.ops.norm.norm_linear); conv_done: with its x features through the conv step
        already (norm_linear's conv=self.conv_step(state))."""
        x, z = (hidden if projected else self.in_proj(hidden)).chunk(2, dim=-1)
        if not conv_done:
            x = causal_conv1d_step(state.conv_state, x, self.conv1d.weight[:, 0], self.conv1d.bias,
                                   activation="silu")
        dt_low, B, C = self._dt_low_B_C(x)
        # A = -exp(A_log) and dt = dt_proj(dt_low) happen inside the step kernel (launches per token saved);
        # state_prefetch: the launch just before (x_proj) never writes the SSM state
        y = selective_scan_step(state.ssm_state, x, dt_low, self.A_log, B[:, None], C[:, None], D=self.D, z=z,
                                dt_bias=self.dt_proj.bias, dt_softplus=True, A_is_log=True,
                                dt_proj_weight=self.dt_proj.weight, state_prefetch=True)
        return linear(y, self.out_proj.weight, self.out_proj.bias)  # one row: a Triton GEMV on CUDA
