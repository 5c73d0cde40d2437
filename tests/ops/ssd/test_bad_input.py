"""Bad input raises ValueError naming the argument, what was expected and what was given."""

import pytest
import torch

from ssmkit.ops.ssd import ssd, ssd_step
from tests.ops.ssd.inputs import make_inputs


def call(**overrides):
    args = make_inputs(seqlen=10, dtype=torch.float32)
    args.update(overrides)
    return ssd(**args)


@pytest.mark.parametrize("overrides,match", [
    (dict(x=torch.randn(2, 10, 4)), r"x: expected 4 dims.*got shape \(2, 10, 4\)"),
    (dict(dt=torch.randn(2, 11, 4)), r"dt: expected shape \(2, 10, 4\), got \(2, 11, 4\)"),
    (dict(A=torch.full((4,), 0.5)), r"A: expected all entries < 0.*0.5"),
    (dict(A=-torch.ones(3)), r"A: expected shape \(4\)"),
    (dict(B=torch.randn(2, 10, 3, 5), C=torch.randn(2, 10, 3, 5)), r"nheads \(4\) must be divisible by ngroups.*3"),
    (dict(C=torch.randn(2, 10, 2, 6)), r"C: expected shape \(2, 10, 2, 5\)"),
    (dict(D=torch.randn(5)), r"D: expected shape \(4\)"),
    (dict(z=torch.randn(2, 10, 4, 7)), r"z: expected shape"),
    (dict(chunk_size=0), r"chunk_size: expected a positive int, got 0"),
    (dict(impl="fast"), r"impl: expected one of .*got 'fast'"),
    (dict(initial_state=torch.randn(2, 4, 8, 4)), r"initial_state: expected shape \(2, 4, 8, 5\)"),
    (dict(dt_limit=(1.0, 0.1)), r"dt_limit: expected \(lo, hi\) with lo <= hi"),
    (dict(x=torch.full((2, 10, 4, 8), float("nan"))), r"x: expected finite values"),
    (dict(A=torch.tensor([-1.0, -1.0, -1.0, -1.0], device="meta")), r"one device.*A on meta"),
])
def test_bad_input_names_the_argument(overrides, match):
    with pytest.raises(ValueError, match=match):
        call(**overrides)


@pytest.mark.parametrize("cu,match", [
    (torch.tensor([0, 6, 4, 10]), r"cu_seqlens: expected non-decreasing"),
    (torch.tensor([0, 4, 9]), r"cu_seqlens: expected to start at 0 and end at seqlen=10"),
    (torch.tensor([1, 10]), r"cu_seqlens: expected to start at 0"),
    (torch.tensor([0.0, 10.0]), r"cu_seqlens: expected a 1-D integer tensor"),
])
def test_bad_cu_seqlens(cu, match):
    args = make_inputs(batch=1, seqlen=10, dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        ssd(**args, cu_seqlens=cu)


def test_cu_seqlens_needs_batch_one():
    with pytest.raises(ValueError, match=r"cu_seqlens: packed sequences need batch == 1, got batch 2"):
        call(cu_seqlens=torch.tensor([0, 10]))


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="impl: 'triton'"):
        call(impl="triton")


def step_call(**overrides):
    a = make_inputs(batch=2, seqlen=1, dtype=torch.float32)
    args = dict(state=torch.zeros(2, 4, 8, 5), x=a["x"][:, 0], dt=a["dt"][:, 0], A=a["A"], B=a["B"][:, 0],
                C=a["C"][:, 0])
    args.update(overrides)
    return ssd_step(**args)


@pytest.mark.parametrize("overrides,match", [
    (dict(impl="chunked"), r"impl: expected one of \['auto', 'reference', 'triton'\], got 'chunked'"),
    (dict(state=torch.zeros(2, 4, 8, 6)), r"state: expected shape \(2, 4, 8, 5\), got \(2, 4, 8, 6\)"),
    (dict(state=torch.zeros(5, 4, 8, 5)), r"state: expected shape \(2, 4, 8, 5\)"),
    (dict(dt=torch.zeros(2, 3)), r"dt: expected shape \(2, 4\)"),
    (dict(C=torch.zeros(2, 2, 4)), r"C: expected shape \(2, 2, 5\)"),
    (dict(state=torch.zeros(5, 4, 8, 5), state_indices=torch.tensor([0.0, 1.0])),
     r"state_indices: expected an integer tensor"),
    (dict(state_indices=torch.tensor([0, 1, 2])), r"state_indices: expected shape \(2\)"),
])
def test_bad_step_input_names_the_argument(overrides, match):
    with pytest.raises(ValueError, match=match):
        step_call(**overrides)


def test_triton_step_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="impl: 'triton'"):
        step_call(impl="triton")
