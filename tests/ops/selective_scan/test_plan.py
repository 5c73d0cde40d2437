"""The selective scan's launch plan: segment lengths and block configs keep the kernels' preconditions for any
shape (checked against closed forms, since the plan is arithmetic)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")
from ssmkit.ops.selective_scan.triton.plan import CHECKPOINT_ROWS, configs, segment_length  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(seqlen=st.integers(1, 200_000), warps=st.integers(1, 100_000), sms=st.integers(0, 200),
       interval=st.sampled_from([8, 16, 128]), per_sm=st.integers(1, 64))
def test_segments_are_whole_intervals_covering_the_sequence_and_only_when_the_gpu_is_short_of_warps(
        seqlen, warps, sms, interval, per_sm):
    seg = segment_length(seqlen, warps, sms, interval, per_sm)
    nseg = math.ceil(seqlen / seg)
    assert seg % interval == 0 and seg >= interval
    assert (nseg - 1) * seg < seqlen <= nseg * seg  # every segment holds a row, the last may be short
    wanted = max(math.ceil(per_sm * sms / warps), 1)
    if wanted == 1:
        assert nseg == 1  # the channel tiles alone fill the GPU (or no GPU: the interpreter)
    else:
        # as few segments as reach the wanted count, up to whole-interval rounding
        assert nseg <= wanted
        assert seg == interval or math.ceil(seqlen / (seg - interval)) > wanted


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["fwd", "bwd"]), dstate=st.sampled_from([1, 3, 4, 16, 64, 128]),
       dpg=st.integers(1, 4096), loop=st.booleans())
def test_every_config_fits_a_checkpoint_interval_the_group_and_the_register_budget(kind, dstate, dpg, loop):
    cfgs = configs(kind, dstate, dpg, loop=loop)
    bn = max(2, 1 << (dstate - 1).bit_length())
    group = 1 << (dpg - 1).bit_length()
    assert cfgs, "no config"
    assert len({tuple(sorted(c.items())) for c in cfgs}) == len(cfgs), "a config listed twice"
    for c in cfgs:
        assert CHECKPOINT_ROWS % c["BLOCK_T"] == 0  # tiles never straddle a checkpoint
        assert c["BLOCK_D"] <= max(group, 8)
        if c.get("LOOP"):  # whole channels a thread: at most 64 state elements each
            assert c["BLOCK_D"] * bn <= 2048 * c["num_warps"] or c["BLOCK_D"] <= 8
    if loop and kind == "fwd":
        assert cfgs[0].get("LOOP"), "an untuned forward must run a LOOP config"
    if not loop:
        assert not any(c.get("LOOP") for c in cfgs)
