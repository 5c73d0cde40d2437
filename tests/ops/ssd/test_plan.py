"""The SSD forward's segment plan: how many segments each sequence is cut into, from the sequences, heads, length
and SM count (plan.segment_count, make_plan's policy)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.ops.ssd.triton.plan import PROGRAMS_PER_SM, make_plan, segment_count


def test_segment_count_cuts_only_below_one_program_an_sm_then_fills_the_target():
    # the benchmark shapes on an H100 (132 SMs): 65,536 tokens, 32 heads, chunk 64; then batch 1
    for seqlen, batch, nseg in ((512, 128, 1), (2048, 32, 1), (4096, 16, 1), (8192, 8, 1), (16384, 4, 4),
                                (16384, 1, 16), (1024, 1, 16)):
        got = segment_count(seqlen // 64, batch, 32, 132)
        assert got == nseg, (seqlen, batch, got)
        if batch * 32 >= 132:
            assert got == 1
        else:  # the most that fit the target, or one a chunk
            assert batch * 32 * got <= PROGRAMS_PER_SM * 132
            assert batch * 32 * (got + 1) > PROGRAMS_PER_SM * 132 or got == seqlen // 64


def test_segment_count_is_at_most_one_segment_a_chunk_and_at_least_one():
    assert segment_count(3, 1, 1, 132) == 3
    assert segment_count(1, 0, 32, 132) == 1
    assert segment_count(100, 1, 1, 132, programs_per_sm=0) == 1


def test_make_plan_follows_segment_count_with_the_devices_sm_count():
    # on CPU sm_count is 4, so 1 sequence x 2 heads (2 programs < 4) wants 16 // 2 = 8 segments of 40 chunks
    plan = make_plan(torch.empty(1, 40 * 16, 2, 8), 2, None, 16)
    nseg = segment_count(40, 1, 2, 4)
    assert nseg == 8
    assert plan.seg_chunks == -(-40 // nseg) and plan.nseg == -(-40 // plan.seg_chunks)


@given(nchunks=st.integers(1, 600), nseq=st.integers(0, 300), nheads=st.integers(1, 128),
       sms=st.sampled_from([4, 78, 108, 132, 144]), target=st.integers(1, 8))
@settings(max_examples=300, deadline=None)
def test_segment_count_is_the_most_segments_that_fit_the_target_below_one_program_an_sm(nchunks, nseq, nheads,
                                                                                         sms, target):
    got = segment_count(nchunks, nseq, nheads, sms, target)
    programs = max(1, nseq * nheads)
    assert 1 <= got <= nchunks
    if programs >= sms:
        assert got == 1
    else:  # found by search, not by the closed form the function uses
        want = max([n for n in range(1, nchunks + 1) if programs * n <= target * sms], default=1)
        assert got == want
