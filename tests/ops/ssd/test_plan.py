"""The SSD forward's segment plan: how many segments each sequence is cut into, from the sequences, heads, length
and SM count (plan.segment_count, make_plan's policy)."""

import torch

from ssmkit.ops.ssd.triton.plan import PROGRAMS_PER_SM, make_plan, segment_count


def test_segment_count_gives_the_fewest_segments_that_reach_the_program_target():
    # the benchmark shapes on an H100 (132 SMs): 65,536 tokens, 32 heads, chunk 64
    for seqlen, nseg in ((512, 1), (2048, 1), (4096, 2), (8192, 4), (16384, 7)):
        batch = 65536 // seqlen
        got = segment_count(seqlen // 64, batch, 32, 132)
        assert got == nseg, (seqlen, got)
        assert batch * 32 * got >= PROGRAMS_PER_SM * 132 or got == seqlen // 64
        assert got == 1 or batch * 32 * (got - 1) < PROGRAMS_PER_SM * 132


def test_segment_count_is_at_most_one_segment_a_chunk_and_at_least_one():
    assert segment_count(3, 1, 1, 132) == 3
    assert segment_count(1, 0, 32, 132) == 1
    assert segment_count(100, 1, 1, 132, programs_per_sm=0) == 1


def test_make_plan_follows_segment_count_with_the_devices_sm_count():
    # on CPU sm_count is 4, so 1 sequence x 2 heads wants cdiv(24, 2) = 12 segments of a 40-chunk sequence
    plan = make_plan(torch.empty(1, 40 * 16, 2, 8), 2, None, 16)
    nseg = segment_count(40, 1, 2, 4)
    assert nseg == 12
    assert plan.seg_chunks == -(-40 // nseg) and plan.nseg == -(-40 // plan.seg_chunks)
