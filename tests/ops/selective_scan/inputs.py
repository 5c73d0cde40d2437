"""Random but realistic selective-scan inputs, shaped as in a Mamba-1 layer (dt small and positive, A < 0)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_inputs(
    batch=2, seqlen=33, dim=8, dstate=4, ngroups=2, dtype=torch.float64, *, seed=0, D=True, z=True, dt_bias=True,
    dt_softplus=True, initial_state=True,
):
    """Returns (args, kwargs) for selective_scan(*args, **kwargs).

    dt is the pre-softplus value N(0, 0.5) + c with c in [-4, -2] per channel when dt_softplus, else the softplus
    of it (so dt' ~ 0.02..0.13 either way; without softplus dt_bias is small and non-negative);
    A = -exp(N(0, 1)); B, C, x, z ~ N(0, 1).
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    centre = -4 + 2 * torch.rand(dim, generator=g, dtype=torch.float64)
    dt = 0.5 * randn(batch, seqlen, dim) + centre
    if not dt_softplus:
        dt = F.softplus(dt)
    args = [randn(batch, seqlen, dim), dt, -torch.exp(randn(dim, dstate)),
            randn(batch, seqlen, ngroups, dstate), randn(batch, seqlen, ngroups, dstate)]
    kwargs = {"dt_softplus": dt_softplus}
    if D:
        kwargs["D"] = randn(dim)
    if z:
        kwargs["z"] = randn(batch, seqlen, dim)
    if dt_bias:
        # With softplus the bias may be any sign; without it dt + dt_bias is the step itself and must stay > 0
        # (a negative step makes exp(dt A) > 1 and the state grows without bound).
        kwargs["dt_bias"] = 0.3 * randn(dim) if dt_softplus else 0.02 * torch.rand(dim, generator=g,
                                                                                  dtype=torch.float64)
    if initial_state:
        kwargs["initial_state"] = randn(batch, dim, dstate)
    args = [a.to(dtype) for a in args]
    kwargs = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    return args, kwargs


def tensor_names(kwargs) -> list[str]:
    """Names of all tensor inputs in call order: the five positional ones, then the tensor keyword arguments."""
    return ["x", "dt", "A", "B", "C"] + [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
