"""Random SSD inputs at realistic scales, shared by the SSD tests."""

from __future__ import annotations

import torch


def make_inputs(batch=2, seqlen=37, nheads=4, headdim=8, ngroups=2, dstate=5, dtype=torch.float64, seed=0,
                with_D=True, with_z=True, with_h0=False, nseq=None):
    """Returns a dict of ssd() arguments; dt is pre-softplus (dt_softplus=True, dt_bias given) as in Mamba-2."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    args = dict(
        x=rnd(batch, seqlen, nheads, headdim),
        dt=rnd(batch, seqlen, nheads, scale=0.5),
        A=-torch.exp(rnd(nheads, scale=0.5)).to(dtype),
        B=rnd(batch, seqlen, ngroups, dstate, scale=dstate ** -0.5),
        C=rnd(batch, seqlen, ngroups, dstate, scale=dstate ** -0.5),
        dt_bias=(torch.rand(nheads, generator=g, dtype=torch.float64) * 4 - 4.5).to(dtype),
        dt_softplus=True,
    )
    if with_D:
        args["D"] = rnd(nheads)
    if with_z:
        args["z"] = rnd(batch, seqlen, nheads, headdim)
    if with_h0:
        args["initial_state"] = rnd(nseq or batch, nheads, headdim, dstate)
    return args


def cu_seqlens_from_lengths(lengths):
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int64)
