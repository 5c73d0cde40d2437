"""Decode: ssd_step applied token by token equals the full-sequence output and final state."""

import pytest
import torch

from ssmkit.ops.ssd import ssd, ssd_step, ssd_step_reference
from tests.compare import assert_close
from tests.ops.ssd.inputs import make_inputs


@pytest.mark.parametrize("ngroups", [1, 4])
@pytest.mark.parametrize("state_dtype", [torch.float64, torch.float32])
def test_step_by_step_equals_full_sequence(ngroups, state_dtype):
    args = make_inputs(seqlen=19, ngroups=ngroups, with_h0=True)
    y_full, h_full = ssd(**args, impl="chunked", chunk_size=8, return_final_state=True)
    state = args["initial_state"].to(state_dtype).clone()
    ys = []
    for t in range(19):
        ys.append(ssd_step(state, args["x"][:, t], args["dt"][:, t], args["A"], args["B"][:, t], args["C"][:, t],
                           D=args["D"], z=args["z"][:, t], dt_bias=args["dt_bias"], dt_softplus=True))
    key = state_dtype if state_dtype == torch.float32 else None
    assert_close(torch.stack(ys, 1), y_full, dtype=key, name="y")
    assert_close(state, h_full, dtype=key, name="state")


def test_prefill_then_step_continues_the_sequence():
    args = make_inputs(seqlen=30)
    y_full = ssd(**args, impl="reference")
    pre = {k: (v[:, :25] if isinstance(v, torch.Tensor) and v.ndim >= 3 else v) for k, v in args.items()}
    _, state = ssd(**pre, impl="chunked", chunk_size=16, return_final_state=True)
    for t in range(25, 30):
        y_t = ssd_step(state, args["x"][:, t], args["dt"][:, t], args["A"], args["B"][:, t], args["C"][:, t],
                       D=args["D"], z=args["z"][:, t], dt_bias=args["dt_bias"], dt_softplus=True)
        assert_close(y_t, y_full[:, t], name=f"y[{t}]")


def test_step_with_state_indices_updates_only_the_chosen_slots():
    args = make_inputs(batch=3, seqlen=1)
    pool = torch.randn(5, 4, 8, 5, dtype=torch.float64)
    before = pool.clone()
    slots = torch.tensor([4, 0, 2])
    y = ssd_step(pool, args["x"][:, 0], args["dt"][:, 0], args["A"], args["B"][:, 0], args["C"][:, 0],
                 D=args["D"], dt_bias=args["dt_bias"], dt_softplus=True, state_indices=slots)
    y_ref, h_ref = ssd(**dict(args, z=None), initial_state=before[slots], impl="reference", return_final_state=True)
    assert_close(y, y_ref[:, 0])
    assert_close(pool[slots], h_ref)
    untouched = torch.tensor([1, 3])
    assert torch.equal(pool[untouched], before[untouched])


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_public_step_on_cpu_runs_the_torch_step_bit_for_bit(impl):
    args = make_inputs(batch=3, seqlen=1, dtype=torch.float32)
    step_args = [args[k][:, 0] if k not in ("A",) else args[k] for k in ("x", "dt", "A", "B", "C")]
    kw = dict(D=args["D"], z=args["z"][:, 0], dt_bias=args["dt_bias"], dt_softplus=True)
    state = torch.randn(3, 4, 8, 5)
    expected = state.clone()
    y = ssd_step(state, *step_args, **kw, impl=impl)
    assert torch.equal(y, ssd_step_reference(expected, *step_args, **kw))
    assert torch.equal(state, expected)


def test_A_given_as_its_log_steps_like_A():
    """A_is_log=True takes A_log and uses A = -exp(A_log): the float64 step equals the one given A itself."""
    args = make_inputs(batch=2, seqlen=1)
    step_args = [args[k][:, 0] for k in ("x", "dt")]
    kw = dict(D=args["D"], z=args["z"][:, 0], dt_bias=args["dt_bias"], dt_softplus=True)
    state = torch.randn(2, 4, 8, 5, dtype=torch.float64)
    expected = state.clone()
    y = ssd_step(state, *step_args, torch.log(-args["A"]), args["B"][:, 0], args["C"][:, 0], A_is_log=True, **kw)
    y_ref = ssd_step(expected, *step_args, args["A"], args["B"][:, 0], args["C"][:, 0], **kw)
    assert_close(y, y_ref, name="y")
    assert_close(state, expected, name="state")
