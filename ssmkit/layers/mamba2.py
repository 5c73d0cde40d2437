"""The Mamba-2 mixer (Dao & Gu 2024, figure 6): one in_proj to (z, xBC, dt), causal conv + SiLU over xBC, SSD with
heads and groups, gated RMSNorm(y * silu(z)), out_proj. Parameter names and shapes are transformers' Mamba2Mixer's
(and BambaMixer's): in_proj, conv1d, dt_bias, A_log, D, norm.weight, out_proj.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ssmkit.ops.conv1d import ConvStep, causal_conv1d_step
from ssmkit.ops.norm import norm_linear
from ssmkit.ops.ssd import ssd, ssd_step

from .norm import GatedRMSNorm
from .padding import padded_dt, state_dtype, zero_padded
from .ssm_inputs import conv_silu, decay_rate


@dataclass
class Mamba2State:
    """Decode state of one Mamba-2 layer; sizes do not depend on the context length.

    conv_state (batch, d_inner + 2 * ngroups * d_state, d_conv): the last d_conv inputs of the xBC conv, newest last.
    ssm_state (batch, nheads, headdim, d_state): h of SSD (float32 for half-precision models).
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor


class Mamba2(nn.Module):
    """Mamba-2 mixer over (batch, seqlen, d_model). Reads the `mamba2_*` fields of ModelConfig."""

    def __init__(self, config):
        super().__init__()
        d, di = config.d_model, config.mamba2_d_inner
        self.d_inner, self.d_state = di, config.mamba2_d_state
        self.nheads, self.headdim, self.ngroups = config.mamba2_nheads, config.mamba2_headdim, config.mamba2_ngroups
        self.conv_dim = config.mamba2_conv_dim
        self.chunk_size = config.mamba2_chunk_size
        lo, hi = config.mamba2_dt_limit
        self.dt_limit = None if (lo, hi) == (0.0, math.inf) else (lo, hi)
        self.in_proj = nn.Linear(d, di + self.conv_dim + self.nheads, bias=config.mamba2_proj_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, config.mamba2_d_conv, groups=self.conv_dim,
                                bias=config.mamba2_conv_bias)
        self.dt_bias = nn.Parameter(self._init_dt_bias(self.nheads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.nheads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(di, config.mamba2_norm_group_size, config.norm_eps)
        self.out_proj = nn.Linear(di, d, bias=config.mamba2_proj_bias)

    @staticmethod
    def _init_dt_bias(nheads: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> torch.Tensor:
        """softplus^-1 of dt drawn log-uniform in [dt_min, dt_max] (Mamba-2 reference initialization)."""
        dt = torch.exp(torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        return dt + torch.log(-torch.expm1(-dt))

    def allocate_state(self, batch: int, max_len: int, dtype: torch.dtype, device=None) -> Mamba2State:
        """A zeroed state; max_len is unused (the state has a fixed size)."""
        conv = torch.zeros(batch, self.conv_dim, self.conv1d.kernel_size[0], dtype=dtype, device=device)
        ssm = torch.zeros(batch, self.nheads, self.headdim, self.d_state, dtype=state_dtype(dtype), device=device)
        return Mamba2State(conv_state=conv, ssm_state=ssm)

    def _split_xBC(self, xBC: torch.Tensor):
        """xBC (..., conv_dim) -> x (..., nheads, headdim), B and C (..., ngroups, d_state)."""
        gn = self.ngroups * self.d_state
        x, B, C = xBC.split([self.d_inner, gn, gn], dim=-1)
        lead = xBC.shape[:-1]
        return (x.reshape(*lead, self.nheads, self.headdim), B.reshape(*lead, self.ngroups, self.d_state),
                C.reshape(*lead, self.ngroups, self.d_state))

    def forward(self, hidden: torch.Tensor, state: Mamba2State | None = None,
                key_padding_mask: torch.Tensor | None = None, *,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """hidden (batch, seqlen, d_model) -> (batch, seqlen, d_model).

        With `state`, continues from it and updates it in place (prefill, chunked prefill or decode).
        key_padding_mask (batch, seqlen) bool, False at (left) padding: see layers/padding.py.
        cu_seqlens (nseq + 1,) strictly increasing: documents packed into one row (batch 1, no state, no mask,
        as LanguageModel.forward checks); conv and SSD restart at each document (layers/packing.py).
        """
        batch, seqlen, _ = hidden.shape
        z, xBC, dt = self.in_proj(hidden).split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        xBC = zero_padded(xBC, key_padding_mask)
        xBC = conv_silu(xBC, self.conv1d, None if state is None else state.conv_state, cu_seqlens)
        x, B, C = self._split_xBC(xBC)
        dt_bias, softplus, dt_limit = self.dt_bias, True, self.dt_limit
        if key_padding_mask is not None:
            dt = padded_dt(dt, dt_bias, key_padding_mask, self.dt_limit)
            dt_bias, softplus, dt_limit = None, False, None
        A = decay_rate(self.A_log)
        y = ssd(x, dt, A, B, C, D=self.D, dt_bias=dt_bias, dt_softplus=softplus, dt_limit=dt_limit,
                chunk_size=self.chunk_size, initial_state=None if state is None else state.ssm_state,
                return_final_state=state is not None, cu_seqlens=cu_seqlens, check_values=False)
        if state is not None:
            y, ssm_final = y
            state.ssm_state.copy_(ssm_final)
        y = self.norm(y.reshape(batch, seqlen, self.d_inner), z)
        return self.out_proj(y)

    def conv_step(self, state: Mamba2State) -> ConvStep:
        """The conv decode step that in_proj's xBC features (after z's d_inner) go through, for a projection that
        finishes it (ssmkit.ops.norm.norm_linear's `conv`)."""
        return ConvStep(state.conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, self.d_inner, "silu")

    def step(self, hidden: torch.Tensor, state: Mamba2State, *, projected: bool = False,
             conv_done: bool = False) -> torch.Tensor:
        """One token: hidden (batch, d_model) -> (batch, d_model); updates `state` in place.

        projected: hidden is in_proj's output already (batch, in_proj.out_features), as a block that fuses its
        pre-norm into in_proj passes it (ssmkit.ops.norm.norm_linear); conv_done: with its xBC features through
        the conv step already (norm_linear's conv=self.conv_step(state))."""
        zxbcdt = hidden if projected else self.in_proj(hidden)
        z, xBC, dt = zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)
        if not conv_done:
            xBC = causal_conv1d_step(state.conv_state, xBC, self.conv1d.weight[:, 0], self.conv1d.bias,
                                     activation="silu")
        x, B, C = self._split_xBC(xBC)
        # A = -exp(A_log) happens inside the step kernel (launches per token saved)
        # state_prefetch: the launch just before (in_proj or the conv step) never writes the SSM state
        y = ssd_step(state.ssm_state, x, dt, self.A_log, B, C, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
                     dt_limit=self.dt_limit, A_is_log=True, state_prefetch=True)
        y = y.reshape(hidden.shape[0], self.d_inner)
        if self.out_proj.bias is not None:
            return self.out_proj(self.norm(y, z))
        # the gated norm and out_proj as one op (one Triton launch on CUDA once selectable, see ops.norm)
        return norm_linear(y, self.norm.weight, self.out_proj.weight, self.norm.eps, z=z,
                           group_size=self.norm.group_size)[0]
