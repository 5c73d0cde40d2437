"""The three evaluation orders of SSD compute one function: quadratic and chunked vs the recurrent spec."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from ssmkit.ops.ssd import ssd
from tests.compare import assert_close
from tests.ops.ssd.inputs import make_inputs


def run(impl, args, **kw):
    return ssd(**args, impl=impl, return_final_state=True, **kw)


@pytest.mark.parametrize("impl", ["quadratic", "chunked"])
@pytest.mark.parametrize("seqlen,chunk", [(1, 4), (15, 4), (63, 16), (64, 16), (100, 64), (37, 37), (5, 64)])
@pytest.mark.parametrize("ngroups", [1, 2, 4])
def test_order_matches_recurrent_float64(impl, seqlen, chunk, ngroups):
    args = make_inputs(seqlen=seqlen, ngroups=ngroups, with_h0=True, seed=seqlen + ngroups)
    y_ref, h_ref = run("reference", args)
    y, h = run(impl, args, chunk_size=chunk)
    assert_close(y, y_ref, name="y")
    assert_close(h, h_ref, name="final_state")


@pytest.mark.parametrize("impl", ["quadratic", "chunked"])
@pytest.mark.parametrize("with_D,with_z,with_h0", [(False, False, False), (True, False, True), (False, True, False)])
def test_order_matches_float64_reference_in_float32(impl, with_D, with_z, with_h0):
    args64 = make_inputs(seqlen=300, nheads=4, headdim=16, dstate=16, with_D=with_D, with_z=with_z,
                         with_h0=with_h0, seed=3)
    args32 = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in args64.items()}
    y_ref, h_ref = run("reference", args64)
    y, h = run(impl, args32, chunk_size=64)
    assert y.dtype == torch.float32
    assert_close(y, y_ref, dtype=torch.float32, name="y")
    assert_close(h, h_ref, dtype=torch.float32, name="final_state")


def test_headdim_100_and_per_channel_D():
    args = make_inputs(seqlen=23, nheads=2, headdim=100, ngroups=1, dstate=7, with_h0=True)
    args["D"] = torch.randn(2, 100, dtype=torch.float64)
    y_ref, h_ref = run("reference", args)
    y, h = run("chunked", args, chunk_size=8)
    assert_close(y, y_ref)
    assert_close(h, h_ref)


def test_dt_limit_clamps_the_step_before_the_scan():
    args = make_inputs(seqlen=20)
    lo, hi = 0.05, 0.2
    y = ssd(**args, dt_limit=(lo, hi), impl="chunked", chunk_size=8)
    dt_clamped = torch.nn.functional.softplus(args["dt"] + args["dt_bias"]).clamp(lo, hi)
    manual = dict(args, dt=dt_clamped, dt_bias=None, dt_softplus=False)
    assert_close(y, ssd(**manual, impl="reference"))


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 2), seqlen=st.integers(1, 40), nheads_per_group=st.integers(1, 3),
       ngroups=st.integers(1, 2), headdim=st.integers(1, 5), dstate=st.integers(1, 6), chunk=st.integers(1, 17),
       h0=st.booleans())
def test_chunked_matches_recurrent_for_any_shape_and_chunk(batch, seqlen, nheads_per_group, ngroups, headdim,
                                                           dstate, chunk, h0):
    args = make_inputs(batch=batch, seqlen=seqlen, nheads=nheads_per_group * ngroups, headdim=headdim,
                       ngroups=ngroups, dstate=dstate, with_h0=h0, seed=seqlen * 7 + chunk)
    y_ref, h_ref = run("reference", args)
    for impl in ("quadratic", "chunked"):
        y, h = run(impl, args, chunk_size=chunk)
        assert_close(y, y_ref, name=f"{impl} y")
        assert_close(h, h_ref, name=f"{impl} final_state")


def test_bfloat16_inputs_compute_in_float32():
    args64 = make_inputs(seqlen=128, nheads=4, headdim=16, dstate=16, seed=9)
    args16 = {k: v.bfloat16() if isinstance(v, torch.Tensor) else v for k, v in args64.items()}
    args_rounded = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in args16.items()}
    y_ref, _ = run("reference", args_rounded)
    y, h = run("chunked", args16)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
    assert_close(y, y_ref, dtype=torch.bfloat16)
