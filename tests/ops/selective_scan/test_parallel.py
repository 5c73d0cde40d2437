"""The log-depth parallel scan against the sequential reference: outputs, final states and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ssmkit.ops.selective_scan.parallel as parallel_mod
from ssmkit.ops.selective_scan import selective_scan
from tests.compare import assert_close

from .inputs import make_inputs, tensor_names


def _as64(args, kwargs):
    return [a.double() for a in args], {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def check_against_reference(args, kwargs, dtype=None):
    """Parallel in the inputs' dtype against the float64 reference on the same (rounded) values."""
    y, h = selective_scan(*args, **kwargs, impl="parallel", return_final_state=True)
    args64, kwargs64 = _as64(args, kwargs)
    y_ref, h_ref = selective_scan(*args64, **kwargs64, impl="reference", return_final_state=True)
    assert y.dtype == args[0].dtype
    assert_close(y, y_ref, dtype, name="y")
    assert_close(h, h_ref, dtype, name="final_state")


CASES = {
    # name: (batch, seqlen, dim, dstate, ngroups, options)
    "length_1": (2, 1, 8, 4, 2, {}),
    "odd_length": (2, 15, 8, 4, 2, {}),
    "odd_length_63": (1, 63, 6, 3, 3, {}),
    "long_300": (2, 300, 8, 4, 1, {}),
    "batch_1": (1, 33, 8, 4, 2, {}),
    "ngroups_1": (2, 33, 8, 4, 1, {}),
    "ngroups_eq_dim": (2, 33, 8, 4, 8, {}),
    "no_D_no_z": (2, 33, 8, 4, 2, {"D": False, "z": False}),
    "no_initial_state": (2, 33, 8, 4, 2, {"initial_state": False}),
    "no_bias_no_softplus": (2, 33, 8, 4, 2, {"dt_bias": False, "dt_softplus": False}),
    "bias_without_softplus": (2, 33, 8, 4, 2, {"dt_softplus": False}),
    "dstate_1": (2, 17, 8, 1, 2, {}),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_parallel_matches_reference(case, dtype):
    batch, seqlen, dim, dstate, ngroups, options = CASES[case]
    args, kwargs = make_inputs(batch, seqlen, dim, dstate, ngroups, dtype, seed=len(case), **options)
    check_against_reference(args, kwargs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_parallel_low_precision_computes_in_float32_and_returns_input_dtype(dtype):
    args, kwargs = make_inputs(2, 40, 8, 4, 2, dtype, seed=3)
    check_against_reference(args, kwargs)
    _, h = selective_scan(*args, **kwargs, impl="parallel", return_final_state=True)
    assert h.dtype == torch.float32


@pytest.mark.parametrize("seqlen", [15, 16, 17, 64])
def test_parallel_matches_reference_when_the_sequence_spans_several_chunks(seqlen, monkeypatch):
    monkeypatch.setattr(parallel_mod, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(parallel_mod, "MIN_CHUNK_LEN", 4)
    args, kwargs = make_inputs(2, seqlen, 6, 3, 2, torch.float64, seed=seqlen)
    check_against_reference(args, kwargs)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3), seqlen=st.integers(1, 70), ngroups=st.integers(1, 3), per_group=st.integers(1, 4),
    dstate=st.integers(1, 5), flags=st.lists(st.booleans(), min_size=5, max_size=5),
    min_chunk=st.sampled_from([2, 3, 64]), seed=st.integers(0, 2**16),
)
def test_parallel_matches_reference_on_awkward_shapes(batch, seqlen, ngroups, per_group, dstate, flags, min_chunk,
                                                      seed):
    D, z, dt_bias, dt_softplus, initial_state = flags
    args, kwargs = make_inputs(batch, seqlen, ngroups * per_group, dstate, ngroups, seed=seed, D=D, z=z,
                               dt_bias=dt_bias, dt_softplus=dt_softplus, initial_state=initial_state)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(parallel_mod, "CHUNK_ELEMENTS", 1)
        mp.setattr(parallel_mod, "MIN_CHUNK_LEN", min_chunk)
        check_against_reference(args, kwargs)


def _grads(args, kwargs, impl, seed=0):
    """Gradients of a random projection of (y, final_state) with respect to every tensor input."""
    leaves = [a.clone().requires_grad_() for a in args]
    kw = {k: v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    y, h = selective_scan(*leaves, **kw, impl=impl, return_final_state=True)
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + (
        h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
    inputs = leaves + [v for v in kw.values() if isinstance(v, torch.Tensor)]
    return torch.autograd.grad(loss, inputs)


def test_parallel_gradients_match_reference_gradients_for_every_input(monkeypatch):
    monkeypatch.setattr(parallel_mod, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(parallel_mod, "MIN_CHUNK_LEN", 16)  # 63 steps: three full chunks and a partial one
    args, kwargs = make_inputs(2, 63, 8, 4, 2, torch.float64, seed=11)
    names = tensor_names(kwargs)
    assert names == ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_state"]
    for name, g_par, g_ref in zip(names, _grads(args, kwargs, "parallel"), _grads(args, kwargs, "reference")):
        assert_close(g_par, g_ref, grad=True, name=f"d{name}")


@pytest.mark.parametrize("impl", ["reference", "parallel"])
def test_gradcheck_in_float64_on_small_shapes(impl, monkeypatch):
    monkeypatch.setattr(parallel_mod, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(parallel_mod, "MIN_CHUNK_LEN", 2)  # 5 steps in chunks of 2, 2, 1
    args, kwargs = make_inputs(2, 5, 4, 2, 2, torch.float64, seed=5)
    names = [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    tensors = [a.clone().requires_grad_() for a in args] + [kwargs[k].clone().requires_grad_() for k in names]

    def fn(*ts):
        return selective_scan(*ts[:5], **dict(zip(names, ts[5:])), dt_softplus=True, impl=impl,
                              return_final_state=True)

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-8, rtol=1e-6)
