"""The S4 layer (Gu, Goel & Re 2022): H independent LTI SSMs with HiPPO-LegS A, then GELU and a linear mix.

Full sequences run as a convolution with the SSM kernel K (via FFT); continuing from a state and decoding run the
recurrence. Both are the same map (ssmkit.ops.s4 tests that), so prefill and decode agree with a full forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.ops.s4 import discretize, fft_conv, hippo_legs, s4_recurrent, s4_step, ssm_kernel

from .padding import state_dtype, zero_padded


@dataclass
class S4State:
    """Decode state of one S4 layer: ssm_state (batch, d_model, s4_d_state), independent of the context length."""

    ssm_state: torch.Tensor


class S4(nn.Module):
    """S4 mixer over (batch, seqlen, d_model): y = out_proj(gelu(SSM(x) + D x)), one SSM per channel.

    A (N, N) is the HiPPO-LegS matrix shared by all channels (a fixed buffer); B (H, N) starts at HiPPO's B; C
    (H, N) is random; the step dt (H,) is log-uniform in [s4_dt_min, s4_dt_max]. Reads the `s4_*` fields.
    """

    def __init__(self, config):
        super().__init__()
        h, n = config.d_model, config.s4_d_state
        self.method = config.s4_discretization
        A, B = hippo_legs(n, dtype=torch.float32)
        self.register_buffer("A", A)
        self.B = nn.Parameter(B.repeat(h, 1))
        self.C = nn.Parameter(torch.randn(h, n) * n ** -0.5)
        lo, hi = math.log(config.s4_dt_min), math.log(config.s4_dt_max)
        self.log_dt = nn.Parameter(torch.rand(h) * (hi - lo) + lo)
        self.D = nn.Parameter(torch.randn(h))
        self.out_proj = nn.Linear(h, h)

    def allocate_state(self, batch: int, max_len: int, dtype: torch.dtype, device=None) -> S4State:
        """A zeroed state; max_len is unused (the state has a fixed size)."""
        shape = (batch, self.B.shape[0], self.B.shape[1])
        return S4State(ssm_state=torch.zeros(shape, dtype=state_dtype(dtype), device=device))

    def _system(self):
        """(Abar (H, N, N), Bbar (H, N), C (H, N)) for the current dt, in float32 (float64 kept): the matrix
        exponential and the kernel's powers of Abar are not computed in half precision."""
        ct = torch.float64 if self.B.dtype == torch.float64 else torch.float32
        h, n = self.B.shape
        Abar, Bbar = discretize(self.A.to(ct).expand(h, n, n), self.B.to(ct), torch.exp(self.log_dt.to(ct)),
                                self.method)
        return Abar, Bbar, self.C.to(ct)

    def forward(self, x: torch.Tensor, state: S4State | None = None,
                key_padding_mask: torch.Tensor | None = None, *,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """x (batch, seqlen, d_model) -> (batch, seqlen, d_model); with `state`, continues from it in place.

        key_padding_mask zeroes padded inputs: exact for left padding of a fresh state (which stays zero);
        an LTI state cannot skip a step, so padding after real tokens would decay it.
        cu_seqlens (nseq + 1,) strictly increasing: documents packed into one row (batch 1, no state, no mask,
        as LanguageModel.forward checks); each document is convolved alone with one kernel K of the longest
        document's length (fft_conv uses the first L taps for a length-L document, which are its own kernel).
        """
        x = zero_padded(x, key_padding_mask)
        Abar, Bbar, C = self._system()
        if cu_seqlens is not None:
            spans = list(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()))
            K = ssm_kernel(Abar, Bbar, C, max(e - s for s, e in spans))
            y = torch.cat([fft_conv(x[:, s:e], K, D=self.D) for s, e in spans], dim=1)
        elif state is None:
            y = fft_conv(x, ssm_kernel(Abar, Bbar, C, x.shape[1]), D=self.D)
        else:
            y, h = s4_recurrent(x, Abar, Bbar, C, D=self.D, initial_state=state.ssm_state,
                                return_final_state=True)
            state.ssm_state.copy_(h)
        return self.out_proj(F.gelu(y))

    def step(self, x: torch.Tensor, state: S4State) -> torch.Tensor:
        """One token: x (batch, d_model) -> (batch, d_model); updates `state` in place."""
        Abar, Bbar, C = self._system()
        return self.out_proj(F.gelu(s4_step(state.ssm_state, x, Abar, Bbar, C, D=self.D)))
