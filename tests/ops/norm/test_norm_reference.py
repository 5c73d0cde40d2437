"""rms_norm and gated_rms_norm against a float64 formula and against transformers' modules on the same weights."""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.bamba.modeling_bamba import BambaRMSNormGated
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.mamba2.modeling_mamba2 import Mamba2RMSNorm, MambaRMSNormGated

from ssmkit.ops.norm import gated_rms_norm, rms_norm
from tests.compare import assert_close

F64 = torch.float64


def gated_module(module, hidden_size, group_size):
    """transformers' gated norm; releases before the group_size argument normalize over all channels."""
    if "group_size" in inspect.signature(module.__init__).parameters:
        return module(hidden_size, group_size=group_size, eps=1e-6)
    if group_size != hidden_size:
        pytest.skip(f"this transformers' {module.__name__} has no group_size (it normalizes over all channels)")
    return module(hidden_size, eps=1e-6)


def rms_formula(x, weight, eps, group_size=None):
    """float64: x / sqrt(mean over each group of x^2 + eps) * weight, groups as contiguous channel blocks."""
    x = x.double()
    group_size = group_size or x.shape[-1]
    groups = x.reshape(*x.shape[:-1], -1, group_size)
    normed = groups / torch.sqrt((groups * groups).mean(-1, keepdim=True) + eps)
    return normed.reshape(x.shape) * weight.double()


def silu64(z):
    z = z.double()
    return z / (1 + torch.exp(-z))


def _data(shape, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=F64).to(dtype)
    z = torch.randn(*shape, generator=g, dtype=F64).to(dtype)
    weight = (1 + 0.5 * torch.randn(shape[-1], generator=g, dtype=F64)).to(dtype)
    return x, z, weight


@pytest.mark.parametrize("shape", [(7,), (2, 5, 16), (1, 1, 100)])
def test_rms_norm_matches_float64_formula(shape):
    x, _, weight = _data(shape)
    assert_close(rms_norm(x, weight, 1e-5), rms_formula(x, weight, 1e-5))


@pytest.mark.parametrize("module", [LlamaRMSNorm, Mamba2RMSNorm])
@pytest.mark.parametrize("x_dtype, w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                              (torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16)])
def test_rms_norm_equals_transformers_module_on_same_weights(module, x_dtype, w_dtype):
    x, _, weight = _data((3, 11, 64), seed=1)
    norm = module(64, eps=1e-6).to(w_dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        want = norm(x.to(x_dtype))
    got = rms_norm(x.to(x_dtype), norm.weight.detach(), 1e-6)
    assert got.dtype == want.dtype
    assert_close(got, want, tol=(0.0, 0.0))  # the same operations in the same order: bitwise equal


@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("group_size", [None, 8, 3])
def test_gated_rms_norm_matches_float64_formula(norm_before_gate, group_size):
    x, z, weight = _data((2, 5, 24))
    got = gated_rms_norm(x, z, weight, 1e-5, group_size=group_size, norm_before_gate=norm_before_gate)
    if norm_before_gate:
        want = rms_formula(x, weight, 1e-5, group_size) * silu64(z)
    else:
        want = rms_formula(x * silu64(z), weight, 1e-5, group_size)
    assert_close(got, want)


@pytest.mark.parametrize("module", [MambaRMSNormGated, BambaRMSNormGated])
@pytest.mark.parametrize("ngroups", [1, 2, 8])
@pytest.mark.parametrize("x_dtype, w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                              (torch.bfloat16, torch.bfloat16)])
def test_gated_rms_norm_equals_transformers_module_on_same_weights(module, ngroups, x_dtype, w_dtype):
    d_inner = 64
    x, z, weight = _data((2, 9, d_inner), seed=ngroups)
    # As the Mamba-2 mixers build it: group_size = intermediate_size // n_groups.
    norm = gated_module(module, d_inner, d_inner // ngroups).to(w_dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        want = norm(x.to(x_dtype), z.to(x_dtype))
    got = gated_rms_norm(x.to(x_dtype), z.to(x_dtype), norm.weight.detach(), 1e-6, group_size=d_inner // ngroups)
    assert got.dtype == want.dtype
    assert_close(got, want, tol=(0.0, 0.0))  # the same operations in the same order: bitwise equal


def test_gated_rms_norm_without_gate_equals_rms_norm():
    x, _, weight = _data((4, 32), dtype=torch.float32)
    assert_close(gated_rms_norm(x, None, weight), rms_norm(x, weight), tol=(0.0, 0.0))  # same ops: bitwise


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_rms_norm_before_gate_in_low_precision_matches_float64_formula(dtype):
    x, z, weight = _data((3, 7, 48), dtype=dtype, seed=5)
    got = gated_rms_norm(x, z, weight, group_size=16, norm_before_gate=True)
    want = rms_formula(x, weight, 1e-6, 16) * silu64(z)
    assert_close(got, want, dtype)


def test_gradcheck_in_float64_for_x_z_and_weight():
    x, z, weight = _data((2, 3, 6), seed=7)
    args = [t.clone().requires_grad_() for t in (x, z, weight)]
    for norm_before_gate in (False, True):
        def fn(x, z, weight):
            return gated_rms_norm(x, z, weight, group_size=3, norm_before_gate=norm_before_gate)

        assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w), (args[0], args[2]))


@settings(max_examples=25, deadline=None)
@given(
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    ngroups=st.integers(1, 4),
    group_size=st.integers(1, 9),
    norm_before_gate=st.booleans(),
    seed=st.integers(0, 999),
)
def test_awkward_shapes_and_groupings_match_float64_formula(lead, ngroups, group_size, norm_before_gate, seed):
    x, z, weight = _data((*lead, ngroups * group_size), seed=seed)
    got = gated_rms_norm(x, z, weight, group_size=group_size, norm_before_gate=norm_before_gate)
    if norm_before_gate:
        want = rms_formula(x, weight, 1e-6, group_size) * silu64(z)
    else:
        want = rms_formula(x * silu64(z), weight, 1e-6, group_size)
    assert_close(got, want)
    assert_close(rms_norm(x, weight), rms_formula(x, weight, 1e-6), name="rms_norm")


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda x, z, w: rms_norm(x, w[:-1]), "weight"),
        (lambda x, z, w: rms_norm(x, w.unsqueeze(0)), "weight"),
        (lambda x, z, w: rms_norm(x, w, impl="cuda"), "impl"),
        (lambda x, z, w: rms_norm(x, w, eps=-1.0), "eps"),
        (lambda x, z, w: rms_norm(torch.tensor(1.0), w), "x"),
        (lambda x, z, w: rms_norm(x.long(), w), "x"),
        (lambda x, z, w: gated_rms_norm(x, z[..., :-1], w), "z"),
        (lambda x, z, w: gated_rms_norm(x, z, w, group_size=5), "group_size"),
        (lambda x, z, w: gated_rms_norm(x, z, w, group_size=0), "group_size"),
        (lambda x, z, w: gated_rms_norm(x, z, w, impl="triton-ish"), "impl"),
        (lambda x, z, w: gated_rms_norm(x, z.to("meta"), w), "device"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, argument):
    x, z, weight = _data((2, 12))
    with pytest.raises(ValueError, match=argument):
        call(x, z, weight)


@pytest.mark.gpu
@pytest.mark.parametrize("group_size", [256, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gated_rms_norm_on_cuda_equals_transformers_module_on_cuda(dtype, group_size):
    x, z, weight = _data((4, 33, 256), seed=11)
    norm = gated_module(MambaRMSNormGated, 256, group_size).cuda()
    with torch.no_grad():
        norm.weight.copy_(weight)
        want = norm(x.to("cuda", dtype), z.to("cuda", dtype))
    got = gated_rms_norm(x.to("cuda", dtype), z.to("cuda", dtype), norm.weight.detach(), group_size=group_size,
                         impl="reference")  # auto takes the Triton kernel on CUDA (tested in test_norm_triton.py)
    assert_close(got, want, tol=(0.0, 0.0))  # the same operations in the same order: bitwise equal
