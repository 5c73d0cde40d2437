"""Packed sequences (cu_seqlens): every impl equals scanning each sequence alone from its own initial state, in
outputs, final states and gradients; bad offsets fail naming cu_seqlens."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ssmkit.ops.selective_scan as ss
import ssmkit.ops.selective_scan.parallel as parallel_mod
from ssmkit.ops.selective_scan import selective_scan
from tests.compare import assert_close

from .inputs import make_inputs, tensor_names


def _packed_inputs(lengths, dim=6, dstate=3, ngroups=2, dtype=torch.float64, seed=0, initial_state=True,
                   **options):
    """Inputs of one packed row (batch 1) holding sequences of `lengths`, with one initial state per sequence."""
    (x, dt, A, B, C), kwargs = make_inputs(1, sum(lengths), dim, dstate, ngroups, dtype, seed=seed,
                                           initial_state=False, **options)
    if initial_state:
        g = torch.Generator().manual_seed(seed + 1)
        kwargs["initial_state"] = torch.randn(len(lengths), dim, dstate, generator=g, dtype=torch.float64).to(dtype)
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32)
    return [x, dt, A, B, C], kwargs, cu


def _each_alone(args, kwargs, cu):
    """The spec: the unpacked reference on each sequence's slice. Returns (y (1, T, dim), finals (nseq, ...))."""
    x, dt, A, B, C = args
    bounds = cu.tolist()
    ys, finals = [], []
    for k, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        h0 = kwargs.get("initial_state")
        h0 = None if h0 is None else h0[k:k + 1]
        if e == s:
            finals.append(torch.zeros_like(A)[None] if h0 is None else h0)
            continue
        kw = {**kwargs, "initial_state": h0}
        if kw.get("z") is not None:
            kw["z"] = kw["z"][:, s:e]
        y, h = selective_scan(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], **kw, impl="reference",
                              return_final_state=True)
        ys.append(y)
        finals.append(h)
    return torch.cat(ys, 1), torch.cat(finals, 0)


@pytest.mark.parametrize("impl", ["reference", "parallel"])
@pytest.mark.parametrize("lengths", [[5, 1, 9], [1], [4, 0, 3, 0], [0, 7], [17, 16, 1, 15]])
def test_packed_scan_equals_each_sequence_alone_including_empty_ones(impl, lengths, monkeypatch):
    monkeypatch.setattr(parallel_mod, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(parallel_mod, "MIN_CHUNK_LEN", 4)  # sequences start and end inside and at chunk edges
    args, kwargs, cu = _packed_inputs(lengths, seed=len(lengths))
    y, h = selective_scan(*args, **kwargs, cu_seqlens=cu, impl=impl, return_final_state=True)
    y_ref, h_ref = _each_alone(args, kwargs, cu)
    assert h.shape == (len(lengths), 6, 3)
    assert_close(y, y_ref, name=f"{impl} y")
    assert_close(h, h_ref, name=f"{impl} final states")


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=5).filter(lambda ls: sum(ls) > 0),
       ngroups=st.sampled_from([1, 2, 6]), min_chunk=st.sampled_from([2, 3, 64]), flags=st.lists(
           st.booleans(), min_size=3, max_size=3), seed=st.integers(0, 2**16))
def test_parallel_packed_scan_equals_each_sequence_alone_on_awkward_packings(lengths, ngroups, min_chunk, flags,
                                                                             seed):
    z, initial_state, dt_softplus = flags
    args, kwargs, cu = _packed_inputs(lengths, ngroups=ngroups, seed=seed, z=z, initial_state=initial_state,
                                      dt_softplus=dt_softplus)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(parallel_mod, "CHUNK_ELEMENTS", 1)
        mp.setattr(parallel_mod, "MIN_CHUNK_LEN", min_chunk)
        y, h = selective_scan(*args, **kwargs, cu_seqlens=cu, impl="parallel", return_final_state=True)
    y_ref, h_ref = _each_alone(args, kwargs, cu)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final states")


def test_packed_scan_in_float32_matches_the_float64_spec():
    args, kwargs, cu = _packed_inputs([9, 30, 2], dtype=torch.float32, seed=4)
    y, h = selective_scan(*args, **kwargs, cu_seqlens=cu.to(torch.int64), impl="parallel",
                          return_final_state=True)
    y_ref, h_ref = _each_alone([a.double() for a in args], {k: v.double() if isinstance(v, torch.Tensor) else v
                                                           for k, v in kwargs.items()}, cu)
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert_close(y, y_ref, torch.float32, name="y")
    assert_close(h, h_ref, torch.float32, name="final states")


def _grads(fn, args, kwargs, seed=0):
    """Gradients of a fixed random projection of fn's (y, final states) with respect to every tensor input."""
    leaves = [a.clone().requires_grad_() for a in args]
    kw = {k: v.clone().requires_grad_() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    y, h = fn(leaves, kw)
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum() + (
        h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
    return torch.autograd.grad(loss, leaves + [v for v in kw.values() if isinstance(v, torch.Tensor)])


def test_packed_parallel_gradients_equal_each_sequence_alone_for_every_input(monkeypatch):
    monkeypatch.setattr(parallel_mod, "CHUNK_ELEMENTS", 1)
    monkeypatch.setattr(parallel_mod, "MIN_CHUNK_LEN", 8)
    args, kwargs, cu = _packed_inputs([6, 0, 11, 8, 1], seed=9)
    names = tensor_names(kwargs)
    assert names[-1] == "initial_state"

    def packed(a, kw):
        return selective_scan(*a, **kw, cu_seqlens=cu, impl="parallel", return_final_state=True)

    for name, got, want in zip(names, _grads(packed, args, kwargs), _grads(
            lambda a, kw: _each_alone(a, kw, cu), args, kwargs)):
        assert_close(got, want, grad=True, name=f"d{name}")


@pytest.mark.parametrize("cu, match", [
    (torch.tensor([0, 3, 8]), "^cu_seqlens: expected to start at 0 and end at seqlen=7"),
    (torch.tensor([1, 7]), "^cu_seqlens: expected to start at 0"),
    (torch.tensor([0, 5, 3, 7]), "^cu_seqlens: expected non-decreasing offsets"),
    (torch.tensor([7]), "^cu_seqlens: expected at least 2 entries"),
    (torch.tensor([0.0, 7.0]), "^cu_seqlens: expected a 1-D integer tensor"),
    ([0, 7], "^cu_seqlens: expected a 1-D integer tensor"),
])
def test_bad_cu_seqlens_raise_value_error_naming_it(cu, match):
    args, kwargs, _ = _packed_inputs([3, 4])
    with pytest.raises(ValueError, match=match):
        selective_scan(*args, **kwargs, cu_seqlens=cu)


def test_packed_scan_rejects_batch_above_one_and_one_initial_state_per_row():
    (x, dt, A, B, C), kwargs = make_inputs(2, 7, 6, 3, 2, initial_state=False)
    with pytest.raises(ValueError, match="^cu_seqlens: packed sequences need batch == 1"):
        selective_scan(x, dt, A, B, C, **kwargs, cu_seqlens=torch.tensor([0, 7]))
    args, kwargs, cu = _packed_inputs([3, 4])
    with pytest.raises(ValueError, match=r"^initial_state: expected shape \(2, 6, 3\)"):
        selective_scan(*args, **{**kwargs, "initial_state": kwargs["initial_state"][:1]}, cu_seqlens=cu)


def _triton_without_cu_seqlens(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, initial_state=None,
                               return_final_state=False):
    raise AssertionError("a kernel without cu_seqlens must not be given a packed row")


def test_a_triton_kernel_without_cu_seqlens_is_skipped_by_auto_and_refused_when_asked_for(monkeypatch):
    monkeypatch.setattr(ss, "_load_triton", lambda: _triton_without_cu_seqlens)
    monkeypatch.setattr(ss, "_triton_auto_selectable", lambda: True)
    assert ss._resolve("auto", "cuda", packed=True) is ss.selective_scan_parallel
    assert ss._resolve("auto", "cuda", packed=False) is _triton_without_cu_seqlens
    args, kwargs, cu = _packed_inputs([3, 4])
    with pytest.raises(ValueError, match="^impl: 'triton' does not take cu_seqlens"):
        selective_scan(*args, **kwargs, cu_seqlens=cu, impl="triton")
