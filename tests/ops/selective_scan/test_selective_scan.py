"""The public entry point: input checks that name the argument, and the choice of impl."""

from __future__ import annotations

import sys

import pytest
import torch

import ssmkit.ops.selective_scan as ss
from ssmkit.ops.selective_scan import selective_scan

from .inputs import make_inputs

TRITON_MODULE = "ssmkit.ops.selective_scan.triton"


def _call(**changes):
    (x, dt, A, B, C), kwargs = make_inputs(2, 5, 8, 4, 2, seed=0)
    call = dict(x=x, dt=dt, A=A, B=B, C=C, **kwargs)
    call.update(changes)
    args = [call.pop(k) for k in ("x", "dt", "A", "B", "C")]
    return selective_scan(*args, **call)


def _input(name):
    (x, dt, A, B, C), kwargs = make_inputs(2, 5, 8, 4, 2, seed=0)
    return dict(x=x, dt=dt, A=A, B=B, C=C, **kwargs)[name]


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"x": torch.zeros(2, 5)}, "^x: expected 3 dims"),
        ({"x": torch.zeros(2, 5, 8, dtype=torch.int64)}, "^x: expected a floating-point dtype"),
        ({"x": torch.zeros(2, 0, 8), "dt": torch.zeros(2, 0, 8)}, "^x: expected seqlen >= 1"),
        ({"dt": torch.zeros(2, 5, 7)}, "^dt: expected shape"),
        ({"A": -torch.ones(7, 4)}, r"^A: expected shape \(8, dstate\)"),
        ({"A": -torch.ones(8)}, "^A: expected 2 dims"),
        ({"B": torch.zeros(2, 5, 2, 3)}, "^B: expected shape"),
        ({"C": torch.zeros(2, 5, 1, 4)}, "^C: expected shape"),
        ({"B": torch.zeros(2, 5, 3, 4), "C": torch.zeros(2, 5, 3, 4)}, "^B: expected ngroups dividing dim=8"),
        ({"D": torch.zeros(4)}, "^D: expected shape"),
        ({"z": torch.zeros(2, 5, 4)}, "^z: expected shape"),
        ({"dt_bias": torch.zeros(8, 1)}, "^dt_bias: expected shape"),
        ({"initial_state": torch.zeros(2, 8, 3)}, r"^initial_state: expected shape \(2, 8, 4\)"),
        ({"D": torch.zeros(8, device="meta")}, "one device.*D on meta"),
        ({"impl": "cuda_magic"}, "^impl: expected one of"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(changes, match):
    with pytest.raises(ValueError, match=match):
        _call(**changes)


@pytest.mark.parametrize("bad_entry", [0.0, 0.5])
def test_non_negative_A_is_rejected(bad_entry):
    A = _input("A").clone()
    A[3, 1] = bad_entry
    with pytest.raises(ValueError, match="^A: expected all entries < 0"):
        _call(A=A)


def test_triton_impl_is_refused_with_a_clear_error_when_its_module_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, TRITON_MODULE, None)
    with pytest.raises(ValueError, match="^impl: .*'triton'.*selective_scan.triton"):
        _call(impl="triton")


def test_auto_prefers_triton_on_cuda_when_available_and_parallel_otherwise(monkeypatch):
    monkeypatch.setitem(sys.modules, TRITON_MODULE, None)
    assert ss.auto_impl("cuda") == "parallel"
    assert ss.auto_impl("cpu") == "parallel"
    monkeypatch.setattr(ss, "_load_triton", lambda: ss.selective_scan_reference)
    monkeypatch.setattr(ss, "_triton_auto_selectable", lambda: False)  # a Triton module that does not declare itself selectable
    assert ss.auto_impl("cuda") == "parallel"
    monkeypatch.setattr(ss, "_triton_auto_selectable", lambda: True)
    assert ss.auto_impl("cuda") == "triton"
    assert ss.auto_impl("cpu") == "parallel"


def test_explicit_triton_impl_dispatches_to_the_triton_module_when_present(monkeypatch):
    calls = []

    def fake_triton(*args, **kwargs):
        calls.append(kwargs["return_final_state"])
        return ss.selective_scan_reference(*args, **kwargs)

    monkeypatch.setattr(ss, "_load_triton", lambda: fake_triton)
    _call(impl="triton", return_final_state=True)
    assert calls == [True]


def test_auto_on_cpu_runs_the_parallel_scan():
    assert torch.equal(_call(impl="auto"), _call(impl="parallel"))
