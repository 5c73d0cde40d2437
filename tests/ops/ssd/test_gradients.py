"""Gradients: gradcheck in float64 on small shapes, and chunked gradients equal reference gradients."""

import pytest
import torch

from ssmkit.ops.ssd import ssd
from tests.compare import assert_close
from tests.ops.ssd.inputs import cu_seqlens_from_lengths, make_inputs

DIFFERENTIABLE = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state")


def leaves(args):
    out = {k: (v.detach().clone().requires_grad_(True) if k in DIFFERENTIABLE else v) for k, v in args.items()}
    return out, [out[k] for k in DIFFERENTIABLE if k in out]


@pytest.mark.parametrize("impl", ["reference", "quadratic", "chunked"])
def test_gradcheck_float64(impl):
    args = make_inputs(batch=1, seqlen=6, nheads=2, headdim=2, ngroups=1, dstate=2, with_h0=True)
    names = [k for k in DIFFERENTIABLE if k in args]

    def f(*tensors):
        kw = dict(args, **dict(zip(names, tensors)))
        y, h = ssd(**kw, impl=impl, chunk_size=4, return_final_state=True)
        return y, h

    inputs = tuple(args[k].detach().clone().requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", ["quadratic", "chunked"])
@pytest.mark.parametrize("varlen", [False, True])
def test_gradients_match_reference(impl, varlen):
    lengths = [7, 30, 1, 26] if varlen else None
    total = sum(lengths) if varlen else 64
    args = make_inputs(batch=1 if varlen else 2, seqlen=total, nheads=4, headdim=6, ngroups=2, dstate=8,
                       with_h0=True, nseq=len(lengths) if varlen else None, seed=11)
    cu = cu_seqlens_from_lengths(lengths) if varlen else None
    grads = {}
    for name in ("reference", impl):
        kw, params = leaves(args)
        y, h = ssd(**kw, impl=name, chunk_size=16, cu_seqlens=cu, return_final_state=True)
        g = torch.Generator().manual_seed(0)  # fixed weights; randn_like would follow each output's strides
        loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + (
            h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
        grads[name] = torch.autograd.grad(loss, params)
    for k, g, g_ref in zip([k for k in DIFFERENTIABLE if k in args], grads[impl], grads["reference"]):
        assert_close(g, g_ref, grad=True, name=f"d{k}")
