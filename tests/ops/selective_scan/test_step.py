"""Decoding token by token with selective_scan_step must reproduce the full-sequence scan."""

from __future__ import annotations

import pytest
import torch

from ssmkit.ops.selective_scan import selective_scan, selective_scan_step
from tests.compare import assert_close

from .inputs import make_inputs


def _decode(state, args, kwargs, start, stop):
    """Runs selective_scan_step over tokens start..stop-1; returns y (batch, stop-start, dim)."""
    x, dt, A, B, C = args
    z = kwargs.get("z")
    ys = []
    for t in range(start, stop):
        ys.append(selective_scan_step(
            state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D=kwargs.get("D"), z=None if z is None else z[:, t],
            dt_bias=kwargs.get("dt_bias"), dt_softplus=kwargs["dt_softplus"],
        ))
    return torch.stack(ys, dim=1)


@pytest.mark.parametrize("ngroups", [1, 2, 8])
@pytest.mark.parametrize("options", [{}, {"D": False, "z": False, "dt_bias": False, "dt_softplus": False}])
def test_step_token_by_token_matches_full_sequence_outputs_and_final_state(ngroups, options):
    args, kwargs = make_inputs(2, 19, 8, 4, ngroups, seed=ngroups, **options)
    y_ref, h_ref = selective_scan(*args, **kwargs, impl="reference", return_final_state=True)
    state = kwargs.pop("initial_state").clone()
    y = _decode(state, args, kwargs, 0, 19)
    assert_close(y, y_ref, name="y")
    assert_close(state, h_ref, name="final_state")


@pytest.mark.parametrize("impl", ["reference", "parallel"])
def test_prefill_then_decode_matches_full_sequence(impl):
    args, kwargs = make_inputs(2, 30, 8, 4, 2, seed=4)
    y_ref, h_ref = selective_scan(*args, **kwargs, impl="reference", return_final_state=True)
    prefix = [a[:, :21] if a.ndim > 2 else a for a in args]
    prefix_kwargs = dict(kwargs, z=kwargs["z"][:, :21])
    y_prefill, state = selective_scan(*prefix, **prefix_kwargs, impl=impl, return_final_state=True)
    kwargs.pop("initial_state")
    y_decode = _decode(state, args, kwargs, 21, 30)
    assert_close(torch.cat([y_prefill, y_decode], dim=1), y_ref, name="y")
    assert_close(state, h_ref, name="final_state")


def test_step_updates_state_in_place_and_keeps_its_dtype():
    args, kwargs = make_inputs(2, 6, 8, 4, 2, torch.bfloat16, seed=9)
    y_ref, h_ref = selective_scan(*[a.double() for a in args], impl="reference", return_final_state=True,
                                  **{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})
    state = kwargs.pop("initial_state").float()
    pointer = state.data_ptr()
    y = _decode(state, args, kwargs, 0, 6)
    assert state.data_ptr() == pointer and state.dtype == torch.float32 and y.dtype == torch.bfloat16
    assert_close(y, y_ref, torch.bfloat16, name="y")
    assert_close(state, h_ref, torch.float32, name="final_state")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(state=a["state"][:, :, :2]), "^state:"),
        (lambda a: a.update(x=a["x"][None]), "^x:"),
        (lambda a: a.update(dt=a["dt"][:, :3]), "^dt:"),
        (lambda a: a.update(B=a["B"][:, :, :2]), "^B:"),
        (lambda a: a.update(C=a["C"][:, :1]), "^C:"),
        (lambda a: a.update(B=torch.zeros(2, 3, 4), C=torch.zeros(2, 3, 4)), "^B: .*ngroups"),
        (lambda a: a.update(z=a["z"][:, :2]), "^z:"),
    ],
)
def test_step_rejects_bad_shapes_naming_the_argument(change, match):
    (x, dt, A, B, C), kwargs = make_inputs(2, 1, 8, 4, 2, seed=1)
    call = {"state": kwargs["initial_state"], "x": x[:, 0], "dt": dt[:, 0], "A": A, "B": B[:, 0], "C": C[:, 0],
            "z": kwargs["z"][:, 0]}
    change(call)
    args = [call.pop(k) for k in ("state", "x", "dt", "A", "B", "C")]
    with pytest.raises(ValueError, match=match):
        selective_scan_step(*args, **call)


def test_step_impl_is_checked_and_triton_needs_cuda_or_the_interpreter(monkeypatch):
    import pytest

    from ssmkit.ops.selective_scan import selective_scan_step
    from ssmkit.ops.dispatch import triton_module_available

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    state = torch.zeros(1, 4, 3)
    args = (torch.ones(1, 4), torch.ones(1, 4), -torch.ones(4, 3), torch.ones(1, 1, 3), torch.ones(1, 1, 3))
    with pytest.raises(ValueError, match="impl"):
        selective_scan_step(state, *args, impl="fast")
    if triton_module_available("ssmkit.ops.selective_scan"):
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            selective_scan_step(state, *args, impl="triton")
    assert torch.equal(state, torch.zeros(1, 4, 3))  # a refused call leaves the state untouched


def test_step_given_A_log_and_the_low_rank_dt_steps_like_A_and_dt():
    """A_is_log=True with A_log, and dt_proj_weight with the (batch, rank) dt input, equal the step given
    A = -exp(A_log) and dt = dt_low @ W^T (float64)."""
    args, kwargs = make_inputs(2, 1, 8, 4, 2, seed=3)
    x, _, A, B, C = args
    g = torch.Generator().manual_seed(0)
    low, w = torch.randn(2, 3, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    kw = dict(D=kwargs["D"], z=kwargs["z"][:, 0], dt_bias=kwargs["dt_bias"], dt_softplus=True)
    state = kwargs["initial_state"].clone()
    expected = state.clone()
    y = selective_scan_step(state, x[:, 0], low, torch.log(-A), B[:, 0], C[:, 0], A_is_log=True,
                            dt_proj_weight=w, **kw)
    y_ref = selective_scan_step(expected, x[:, 0], low @ w.T, A, B[:, 0], C[:, 0], **kw)
    assert_close(y, y_ref, name="y")
    assert_close(state, expected, name="state")
    with pytest.raises(ValueError, match="dt"):
        selective_scan_step(state, x[:, 0], low @ w.T, A, B[:, 0], C[:, 0], dt_proj_weight=w, **kw)
